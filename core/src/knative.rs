//! Knative's validation rules for autoscaling annotations, re-implemented so that s2z can prove
//! its own output would be admitted.
//!
//! Knative's validating webhook runs after every mutating webhook, and also on every update of a
//! Revision's metadata: an annotation set that breaks these rules gets the whole Revision
//! rejected. The rules follow `pkg/apis/autoscaling/annotation_validation.go`.

use std::collections::BTreeMap;

use crate::labels::{
    ACTIVATION_SCALE, INITIAL_SCALE_KEYS, MAX_SCALE_KEYS, MIN_SCALE_KEYS, RETENTION_KEYS,
    SCALE_DOWN_DELAY_KEYS, first_present,
};
use crate::settings::KnativeConfig;

/// Window annotation; validated because a bad one rejects the Revision like any other.
const WINDOW: &str = "autoscaling.knative.dev/window";

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const HOUR_NANOS: i128 = 3_600 * NANOS_PER_SECOND;

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The annotation at fault (the one Knative would name).
    pub key: String,
    /// Its value.
    pub value: String,
    /// What Knative would object to.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={:?}: {}", self.key, self.value, self.reason)
    }
}

/// Checks the rules that hold on every cluster: integer bounds ≥ 0, `max-scale` 0 = unlimited
/// else ≥ `min-scale`, `activation-scale` ≥ 2 and within [min, max], retention period and
/// scale-down delay within 0..=1h, `initial-scale` ≥ 0. Returns every problem, joined.
pub fn validate_knative(annotations: &BTreeMap<String, String>) -> Result<(), String> {
    let permissive = KnativeConfig {
        allow_zero_initial_scale: true,
        enable_scale_to_zero: true,
        max_scale_limit: None,
    };
    validate_knative_with(annotations, &permissive)
}

/// [`validate_knative`] plus the rules that depend on `config-autoscaler`: `initial-scale: "0"`
/// needs `allow-zero-initial-scale`, and `max-scale` must respect `max-scale-limit`.
pub fn validate_knative_with(
    annotations: &BTreeMap<String, String>,
    config: &KnativeConfig,
) -> Result<(), String> {
    let violations = violations(annotations, config);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations
            .iter()
            .map(Violation::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

fn violation(key: &str, value: &str, reason: impl Into<String>) -> Violation {
    Violation {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Reads a scale bound the way Knative does: absent is 0, otherwise a 32-bit integer ≥ 0.
fn scale_bound(
    annotations: &BTreeMap<String, String>,
    keys: &[&str],
    out: &mut Vec<Violation>,
) -> (Option<(String, String)>, i32) {
    let Some((key, value)) = first_present(annotations, keys) else {
        return (None, 0);
    };
    let found = Some((key.to_string(), value.to_string()));
    match value.parse::<i64>() {
        Ok(n) if (0..=i64::from(i32::MAX)).contains(&n) => (found, i32::try_from(n).unwrap_or(0)),
        Ok(_) => {
            out.push(violation(
                key,
                value,
                "must be an integer from 0 to 2147483647",
            ));
            (found, 0)
        }
        Err(_) => {
            out.push(violation(key, value, "must be a whole number"));
            (found, 0)
        }
    }
}

/// Every rule `annotations` breaks under `config`, in a stable order.
pub fn violations(
    annotations: &BTreeMap<String, String>,
    config: &KnativeConfig,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let (_, min) = scale_bound(annotations, &MIN_SCALE_KEYS, &mut out);
    let (max_found, max) = scale_bound(annotations, &MAX_SCALE_KEYS, &mut out);

    if max != 0
        && max < min
        && let Some((key, value)) = &max_found
    {
        out.push(violation(
            key,
            value,
            format!("max-scale={max} is less than min-scale={min}"),
        ));
    }
    if let (Some((key, value)), Some(limit)) = (&max_found, config.max_scale_limit) {
        if max == 0 {
            out.push(violation(
                key,
                value,
                format!("max-scale=0 (unlimited) is above the cluster's max-scale-limit={limit}"),
            ));
        } else if i64::from(max) > i64::from(limit) {
            out.push(violation(
                key,
                value,
                format!("must be at most the cluster's max-scale-limit={limit}"),
            ));
        }
    }

    if let Some(value) = annotations.get(ACTIVATION_SCALE) {
        match value.parse::<i32>() {
            Err(_) => out.push(violation(ACTIVATION_SCALE, value, "must be a whole number")),
            Ok(a) if min > a => out.push(violation(
                ACTIVATION_SCALE,
                value,
                format!("min-scale={min} is greater than activation-scale={a}"),
            )),
            Ok(a) if max != 0 && max < a => out.push(violation(
                ACTIVATION_SCALE,
                value,
                format!("max-scale={max} is less than activation-scale={a}"),
            )),
            Ok(a) if a < 2 => out.push(violation(ACTIVATION_SCALE, value, "must be at least 2")),
            Ok(_) => {}
        }
    }

    if let Some((key, value)) = first_present(annotations, &INITIAL_SCALE_KEYS) {
        match value.parse::<i64>() {
            Err(_) => out.push(violation(key, value, "must be a whole number")),
            Ok(n) if n < 0 => out.push(violation(key, value, "must be 0 or more")),
            Ok(0) if !config.allow_zero_initial_scale => out.push(violation(
                key,
                value,
                "initial-scale=0 is not allowed by the cluster (allow-zero-initial-scale=false)",
            )),
            Ok(_) => {}
        }
    }

    check_duration(annotations, &RETENTION_KEYS, 0, false, &mut out);
    check_duration(annotations, &SCALE_DOWN_DELAY_KEYS, 0, true, &mut out);
    check_duration(annotations, &[WINDOW], 6 * NANOS_PER_SECOND, true, &mut out);
    out
}

fn check_duration(
    annotations: &BTreeMap<String, String>,
    keys: &[&str],
    min_nanos: i128,
    whole_seconds: bool,
    out: &mut Vec<Violation>,
) {
    let Some((key, value)) = first_present(annotations, keys) else {
        return;
    };
    match parse_go_duration(value) {
        None => out.push(violation(
            key,
            value,
            "must be a duration such as \"30s\" or \"5m\"",
        )),
        Some(d) if d < min_nanos || d > HOUR_NANOS => out.push(violation(
            key,
            value,
            format!("must be between {}s and 1h", min_nanos / NANOS_PER_SECOND),
        )),
        Some(d) if whole_seconds && d % NANOS_PER_SECOND != 0 => {
            out.push(violation(key, value, "must be whole seconds"))
        }
        Some(_) => {}
    }
}

/// Parses a Go `time.ParseDuration` string (`"1h30m"`, `"1.5s"`, `"300ms"`, `"0"`) into
/// nanoseconds; `None` where Go would return an error.
pub fn parse_go_duration(input: &str) -> Option<i128> {
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(tail) => tail.split_at(tail.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => HOUR_NANOS,
            _ => return None,
        };
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = whole.checked_mul(unit_nanos)?;
        if !frac_part.is_empty() {
            // Digits past the 18th cannot change the nanosecond result and would overflow.
            let digits = &frac_part[..frac_part.len().min(18)];
            let scale = 10_i128.checked_pow(u32::try_from(digits.len()).ok()?)?;
            value = value.checked_add(digits.parse::<i128>().ok()? * unit_nanos / scale)?;
        }
        total = total.checked_add(value)?;
        if total > i128::from(i64::MAX) {
            return None;
        }
        rest = after;
    }
    Some(if negative { -total } else { total })
}

/// Renders a duration in a form Go's `time.ParseDuration` reads back exactly.
pub fn format_go_duration(duration: std::time::Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::*;
    use crate::testing::map as anns;

    fn strict(allow_zero: bool, limit: Option<u32>) -> KnativeConfig {
        KnativeConfig {
            allow_zero_initial_scale: allow_zero,
            enable_scale_to_zero: true,
            max_scale_limit: limit,
        }
    }

    #[test]
    fn go_durations() {
        for (text, nanos) in [
            ("0", 0),
            ("1s", NANOS_PER_SECOND),
            ("1h", HOUR_NANOS),
            ("1h30m", 5_400 * NANOS_PER_SECOND),
            ("1.5s", 1_500_000_000),
            (".5s", 500_000_000),
            ("1.s", NANOS_PER_SECOND),
            ("300ms", 300_000_000),
            ("2us", 2_000),
            ("2\u{b5}s", 2_000),
            ("7ns", 7),
            ("-1s", -NANOS_PER_SECOND),
            ("+10m", 600 * NANOS_PER_SECOND),
        ] {
            assert_eq!(parse_go_duration(text), Some(nanos), "{text}");
        }
        for bad in [
            "",
            "1",
            "s",
            ".s",
            "1d",
            "1 s",
            "abc",
            "-",
            "1h 30m",
            "9999999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_duration_format_round_trips() {
        for d in [
            std::time::Duration::from_secs(600),
            std::time::Duration::from_millis(1500),
        ] {
            assert_eq!(
                parse_go_duration(&format_go_duration(d)),
                Some(d.as_nanos() as i128)
            );
        }
    }

    #[test]
    fn valid_sets() {
        for set in [
            anns(&[]),
            anns(&[(MIN_SCALE, "0")]),
            anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "5")]),
            anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "0")]),
            anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "3"), (ACTIVATION_SCALE, "3")]),
            anns(&[(ACTIVATION_SCALE, "2")]),
            anns(&[(INITIAL_SCALE, "0")]),
            anns(&[(RETENTION, "1h")]),
            anns(&[(RETENTION, "1.5s")]),
            anns(&[(SCALE_DOWN_DELAY, "0s")]),
            anns(&[(MIN_SCALE, "1"), (MIN_SCALE_CAMEL, "9"), (MAX_SCALE, "2")]),
        ] {
            assert_eq!(validate_knative(&set), Ok(()), "{set:?}");
        }
    }

    #[test]
    fn invalid_sets_name_the_key() {
        for (set, key) in [
            (anns(&[(MIN_SCALE, "abc")]), MIN_SCALE),
            (anns(&[(MIN_SCALE, "-1")]), MIN_SCALE),
            (anns(&[(MIN_SCALE, "99999999999")]), MIN_SCALE),
            (anns(&[(MAX_SCALE_CAMEL, "x")]), MAX_SCALE_CAMEL),
            (anns(&[(MIN_SCALE, "5"), (MAX_SCALE, "3")]), MAX_SCALE),
            (
                anns(&[(MIN_SCALE_CAMEL, "5"), (MAX_SCALE_CAMEL, "3")]),
                MAX_SCALE_CAMEL,
            ),
            (anns(&[(ACTIVATION_SCALE, "1")]), ACTIVATION_SCALE),
            (anns(&[(ACTIVATION_SCALE, "two")]), ACTIVATION_SCALE),
            (
                anns(&[(ACTIVATION_SCALE, "4"), (MAX_SCALE, "3")]),
                ACTIVATION_SCALE,
            ),
            (
                anns(&[(ACTIVATION_SCALE, "2"), (MIN_SCALE, "3")]),
                ACTIVATION_SCALE,
            ),
            (anns(&[(INITIAL_SCALE, "-1")]), INITIAL_SCALE),
            (anns(&[(INITIAL_SCALE_CAMEL, "x")]), INITIAL_SCALE_CAMEL),
            (anns(&[(RETENTION, "2h")]), RETENTION),
            (anns(&[(RETENTION, "-1s")]), RETENTION),
            (anns(&[(RETENTION_CAMEL, "10 minutes")]), RETENTION_CAMEL),
            (anns(&[(SCALE_DOWN_DELAY, "1.5s")]), SCALE_DOWN_DELAY),
            (anns(&[(SCALE_DOWN_DELAY, "61m")]), SCALE_DOWN_DELAY),
            (anns(&[(WINDOW, "1s")]), WINDOW),
        ] {
            let found = violations(&set, &strict(true, None));
            assert_eq!(found.len(), 1, "{set:?}: {found:?}");
            assert_eq!(found[0].key, key, "{set:?}");
            let joined = validate_knative(&set).err().unwrap_or_default();
            assert!(joined.starts_with(key), "{joined}");
        }
    }

    #[test]
    fn kebab_wins_so_a_bad_camel_twin_is_ignored() {
        let set = anns(&[(MIN_SCALE, "1"), (MIN_SCALE_CAMEL, "abc")]);
        assert_eq!(validate_knative(&set), Ok(()));
    }

    #[test]
    fn cluster_rules() {
        let zero = anns(&[(INITIAL_SCALE, "0")]);
        assert!(validate_knative_with(&zero, &strict(false, None)).is_err());
        assert_eq!(validate_knative_with(&zero, &strict(true, None)), Ok(()));

        let unlimited = anns(&[(MAX_SCALE, "0")]);
        assert!(validate_knative_with(&unlimited, &strict(true, Some(10))).is_err());
        let high = anns(&[(MAX_SCALE, "11")]);
        assert!(validate_knative_with(&high, &strict(true, Some(10))).is_err());
        let ok = anns(&[(MAX_SCALE, "10")]);
        assert_eq!(validate_knative_with(&ok, &strict(true, Some(10))), Ok(()));
        assert_eq!(
            validate_knative_with(&anns(&[]), &strict(false, Some(10))),
            Ok(())
        );
    }

    #[test]
    fn several_problems_are_all_reported() {
        let set = anns(&[(MIN_SCALE, "x"), (RETENTION, "3h")]);
        let joined = validate_knative(&set).err().unwrap_or_default();
        assert!(
            joined.contains(MIN_SCALE) && joined.contains(RETENTION),
            "{joined}"
        );
    }
}
