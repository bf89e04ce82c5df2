//! Dynamic settings from the `s2z-settings` ConfigMap, the warm-up rate limit, and the parts of
//! Knative's `config-autoscaler` that decide which annotations are legal.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// Name of the ConfigMap holding s2z's settings, in the install namespace.
pub const SETTINGS_CONFIGMAP: &str = "s2z-settings";
/// Name of Knative's autoscaler ConfigMap.
pub const KNATIVE_AUTOSCALER_CONFIGMAP: &str = "config-autoscaler";
/// Namespace of Knative Serving's control plane.
pub const KNATIVE_NAMESPACE: &str = "knative-serving";

/// Settings key: seconds without activity before an org goes dormant (seed 000's name).
pub const DORMANCY_PERIOD_KEY: &str = "orgDormancyPeriodSecs";
/// Settings key: the warm-up (activity) rate limit, e.g. `2/hour`.
pub const WARMUP_RATELIMIT_KEY: &str = "orgWarmupRatelimitStr";
/// Settings key: whether activity signals are rate-limited at all.
pub const RATELIMIT_ENABLED_KEY: &str = "ratelimitEnabled";
/// Settings key: seconds between backstop sweeps of every org.
pub const SWEEP_INTERVAL_KEY: &str = "sweepIntervalSecs";
/// Every key [`Settings::from_data`] understands.
pub const SETTINGS_KEYS: [&str; 4] = [
    DORMANCY_PERIOD_KEY,
    WARMUP_RATELIMIT_KEY,
    RATELIMIT_ENABLED_KEY,
    SWEEP_INTERVAL_KEY,
];

/// Why a setting, a rate limit or a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A rate-limit string is not of the form `N/unit`.
    #[error(
        "failed to parse rate limit {input:?}: {reason}; write it as N/unit, e.g. \"2/hour\", \"5/10m\" or \"1/s\""
    )]
    InvalidRateLimit {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration is neither whole seconds nor a humantime duration.
    #[error(
        "failed to parse duration {input:?}: {reason}; write whole seconds (\"3600\") or a duration such as \"90m\" or \"1h 30m\""
    )]
    InvalidDuration {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A ConfigMap key holds a value s2z cannot use.
    #[error("failed to read setting {key}={value:?}: {reason}")]
    InvalidValue {
        /// The ConfigMap key.
        key: String,
        /// The value as found.
        value: String,
        /// What is wrong with it, including how to fix it.
        reason: String,
    },
    /// The settings parse but are unsafe; only `--force` applies them.
    #[error("failed to accept settings: {}; fix them, or pass --force to apply them anyway", problems.join("; "))]
    Unsafe {
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// A rate limit of `count` signals per `period`.
///
/// Parsing accepts `N/<unit>` and `N/<multiplier><unit>` where the unit is `s`, `m`, `h` or `d`,
/// or a long name (`sec`, `second`, `min`, `minute`, `hr`, `hour`, `day`, with or without a
/// plural `s`), case-insensitive, with optional whitespace around each part.
///
/// The canonical [`Display`](fmt::Display) form uses the largest unit that divides the period:
/// the long singular name when the multiplier is 1 (`"2/hour"`, `"1/second"`), else the
/// multiplier and the short unit (`"5/10m"`, `"1/90s"`). Sub-second periods are rounded up to
/// whole seconds when displayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Signals allowed per period.
    pub count: NonZeroU32,
    /// Length of the window.
    pub period: Duration,
}

impl RateLimit {
    /// Shortest spacing between signals that still stays within the limit.
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

const UNITS: [(&str, u64, &[&str]); 4] = [
    ("d", 86_400, &["d", "day", "days"]),
    ("h", 3_600, &["h", "hr", "hrs", "hour", "hours"]),
    ("m", 60, &["m", "min", "mins", "minute", "minutes"]),
    ("s", 1, &["s", "sec", "secs", "second", "seconds"]),
];

fn long_unit_name(short: &str) -> &'static str {
    match short {
        "d" => "day",
        "h" => "hour",
        "m" => "minute",
        _ => "second",
    }
}

fn parse_rate_limit(input: &str) -> Result<RateLimit, String> {
    let (count, period) = input
        .split_once('/')
        .ok_or_else(|| "missing '/' between the count and the period".to_string())?;
    let count = count.trim();
    let count: u32 = count.parse().map_err(|_| {
        if !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) {
            format!("count {count} is too large")
        } else {
            format!("count {count:?} is not a whole number")
        }
    })?;
    let count = NonZeroU32::new(count).ok_or_else(|| "count must be at least 1".to_string())?;

    let period = period.trim();
    let digits = period.len()
        - period
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let (multiplier, unit) = period.split_at(digits);
    let multiplier: u64 = if multiplier.is_empty() {
        1
    } else {
        multiplier
            .parse()
            .map_err(|_| format!("multiplier {multiplier:?} is too large"))?
    };
    if multiplier == 0 {
        return Err("the period must be longer than zero".to_string());
    }
    let unit = unit.trim().to_ascii_lowercase();
    if unit.is_empty() {
        return Err("missing unit after the '/' (s, m, h or d)".to_string());
    }
    let seconds_per_unit = UNITS
        .iter()
        .find(|(_, _, names)| names.contains(&unit.as_str()))
        .map(|(_, secs, _)| *secs)
        .ok_or_else(|| format!("unknown unit {unit:?} (use s, m, h or d)"))?;
    let seconds = multiplier
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| "the period is too long".to_string())?;
    Ok(RateLimit {
        count,
        period: Duration::from_secs(seconds),
    })
}

impl FromStr for RateLimit {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rate_limit(s).map_err(|reason| SettingsError::InvalidRateLimit {
            input: s.to_string(),
            reason,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.period.as_secs();
        if self.period.subsec_nanos() > 0 {
            secs += 1;
        }
        let (short, per_unit) = UNITS
            .iter()
            .find(|(_, per_unit, _)| secs > 0 && secs.is_multiple_of(*per_unit))
            .map(|(short, per_unit, _)| (*short, *per_unit))
            .unwrap_or(("s", 1));
        let multiplier = secs / per_unit;
        if multiplier == 1 {
            write!(f, "{}/{}", self.count, long_unit_name(short))
        } else {
            write!(f, "{}/{}{}", self.count, multiplier, short)
        }
    }
}

impl TryFrom<String> for RateLimit {
    type Error = SettingsError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<RateLimit> for String {
    fn from(value: RateLimit) -> Self {
        value.to_string()
    }
}

impl serde::Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a duration given as whole seconds (`"3600"`) or in humantime form (`"1h"`, `"90m"`).
pub fn parse_duration(input: &str) -> Result<Duration, SettingsError> {
    let text = input.trim();
    let fail = |reason: String| SettingsError::InvalidDuration {
        input: input.to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(fail("it is empty".to_string()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| fail("the number is too large".to_string()));
    }
    humantime::parse_duration(text).map_err(|e| fail(e.to_string()))
}

/// Renders a duration so that [`parse_duration`] reads it back exactly: whole seconds as a plain
/// integer (what the `...Secs` keys suggest), anything finer in humantime form.
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().to_string()
    } else {
        humantime::format_duration(duration).to_string()
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// s2z's dynamic settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Time without activity after which an allowed org goes dormant.
    pub dormancy_period: Duration,
    /// Per-org limit on activity signals written to the API server.
    pub warmup_ratelimit: RateLimit,
    /// Whether [`Settings::warmup_ratelimit`] applies.
    pub ratelimit_enabled: bool,
    /// Interval of the backstop sweep re-evaluating every org.
    pub sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dormancy_period: Duration::from_secs(86_400),
            warmup_ratelimit: RateLimit {
                count: NonZeroU32::MIN.saturating_add(1),
                period: Duration::from_secs(3_600),
            },
            ratelimit_enabled: true,
            sweep_interval: Duration::from_secs(3_600),
        }
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn positive_duration(key: &str, value: &str) -> Result<Duration, SettingsError> {
    let duration = parse_duration(value).map_err(|e| match e {
        SettingsError::InvalidDuration { reason, .. } => invalid(
            key,
            value,
            format!("{reason}; write whole seconds such as \"3600\" or a duration such as \"1h\""),
        ),
        other => other,
    })?;
    if duration.is_zero() {
        return Err(invalid(key, value, "it must be longer than zero"));
    }
    Ok(duration)
}

impl Settings {
    /// Reads settings from ConfigMap data; missing keys take their defaults, unknown keys are
    /// ignored (see [`Settings::unknown_keys`]), and a bad value is an error naming key and value.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        if let Some(value) = data.get(DORMANCY_PERIOD_KEY) {
            settings.dormancy_period = positive_duration(DORMANCY_PERIOD_KEY, value)?;
        }
        if let Some(value) = data.get(WARMUP_RATELIMIT_KEY) {
            settings.warmup_ratelimit = parse_rate_limit(value.trim()).map_err(|reason| {
                invalid(
                    WARMUP_RATELIMIT_KEY,
                    value,
                    format!("{reason}; write it as N/unit, e.g. \"2/hour\" or \"5/10m\""),
                )
            })?;
        }
        if let Some(value) = data.get(RATELIMIT_ENABLED_KEY) {
            settings.ratelimit_enabled = parse_bool(value).ok_or_else(|| {
                invalid(RATELIMIT_ENABLED_KEY, value, "write \"true\" or \"false\"")
            })?;
        }
        if let Some(value) = data.get(SWEEP_INTERVAL_KEY) {
            settings.sweep_interval = positive_duration(SWEEP_INTERVAL_KEY, value)?;
        }
        Ok(settings)
    }

    /// Renders the settings as ConfigMap data that [`Settings::from_data`] reads back unchanged.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                DORMANCY_PERIOD_KEY.to_string(),
                format_duration(self.dormancy_period),
            ),
            (
                WARMUP_RATELIMIT_KEY.to_string(),
                self.warmup_ratelimit.to_string(),
            ),
            (
                RATELIMIT_ENABLED_KEY.to_string(),
                self.ratelimit_enabled.to_string(),
            ),
            (
                SWEEP_INTERVAL_KEY.to_string(),
                format_duration(self.sweep_interval),
            ),
        ])
    }

    /// Keys in `data` that s2z does not know, most likely typos that would otherwise be ignored.
    pub fn unknown_keys(data: &BTreeMap<String, String>) -> Vec<String> {
        data.keys()
            .filter(|k| !SETTINGS_KEYS.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// Problems worth telling an operator about; none of them stops s2z from working.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.ratelimit_enabled && self.warmup_ratelimit.period > self.dormancy_period {
            warnings.push(format!(
                "the {WARMUP_RATELIMIT_KEY} period ({}) is longer than the dormancy period ({}): \
                 activity can be recorded up to {} late, so a busy org may briefly go dormant; \
                 use a rate-limit period of at most {}",
                humantime::format_duration(self.warmup_ratelimit.period),
                humantime::format_duration(self.dormancy_period),
                humantime::format_duration(self.warmup_ratelimit.period),
                humantime::format_duration(self.dormancy_period),
            ));
        }
        warnings
    }

    /// Strict check used before writing settings without `--force`: every warning is an error,
    /// and so is a zero duration (which [`Settings::from_data`] never produces, but a caller
    /// building `Settings` by hand could).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        if self.dormancy_period.is_zero() {
            problems.push(format!("{DORMANCY_PERIOD_KEY} must be longer than zero"));
        }
        if self.sweep_interval.is_zero() {
            problems.push(format!("{SWEEP_INTERVAL_KEY} must be longer than zero"));
        }
        if self.warmup_ratelimit.period.is_zero() {
            problems.push(format!(
                "the {WARMUP_RATELIMIT_KEY} period must be longer than zero"
            ));
        }
        problems.extend(self.warnings());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Unsafe { problems })
        }
    }
}

/// The parts of Knative's `config-autoscaler` ConfigMap that constrain s2z's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnativeConfig {
    /// Whether revisions may say `initial-scale: "0"`.
    pub allow_zero_initial_scale: bool,
    /// Whether Knative scales anything to zero at all.
    pub enable_scale_to_zero: bool,
    /// Cluster cap on `max-scale`; `None` when unlimited.
    pub max_scale_limit: Option<u32>,
}

impl Default for KnativeConfig {
    fn default() -> Self {
        Self {
            allow_zero_initial_scale: false,
            enable_scale_to_zero: true,
            max_scale_limit: None,
        }
    }
}

impl KnativeConfig {
    /// Reads `config-autoscaler` data leniently, as Knative does: a boolean is true only when it
    /// says `true` (any case); an absent or unreadable value keeps Knative's default.
    pub fn from_data(data: &BTreeMap<String, String>) -> KnativeConfig {
        let defaults = KnativeConfig::default();
        let flag = |key: &str, default: bool| {
            data.get(key)
                .map(|v| v.trim().eq_ignore_ascii_case("true"))
                .unwrap_or(default)
        };
        KnativeConfig {
            allow_zero_initial_scale: flag(
                "allow-zero-initial-scale",
                defaults.allow_zero_initial_scale,
            ),
            enable_scale_to_zero: flag("enable-scale-to-zero", defaults.enable_scale_to_zero),
            max_scale_limit: data
                .get("max-scale-limit")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|limit| *limit > 0),
        }
    }
}

#[cfg(test)]
mod tests;
