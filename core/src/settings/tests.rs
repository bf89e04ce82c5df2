//! Tests of settings parsing, rendering and checks.

use super::*;
use crate::testing::map as data;

fn rl(s: &str) -> RateLimit {
    match s.parse() {
        Ok(r) => r,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn short_units() {
    for (text, count, period) in [
        ("1/s", 1, 1),
        ("10/m", 10, 60),
        ("2/h", 2, 3600),
        ("3/d", 3, 86_400),
    ] {
        let r = rl(text);
        assert_eq!(r.count.get(), count, "{text}");
        assert_eq!(r.period, secs(period), "{text}");
    }
}

#[test]
fn long_unit_names_and_plurals() {
    for (text, period) in [
        ("2/second", 1),
        ("2/seconds", 1),
        ("2/sec", 1),
        ("2/secs", 1),
        ("2/minute", 60),
        ("2/minutes", 60),
        ("2/min", 60),
        ("2/mins", 60),
        ("2/hour", 3600),
        ("2/hours", 3600),
        ("2/hr", 3600),
        ("2/hrs", 3600),
        ("2/day", 86_400),
        ("2/days", 86_400),
        ("2/HOUR", 3600),
        ("2/Day", 86_400),
    ] {
        assert_eq!(rl(text).period, secs(period), "{text}");
        assert_eq!(rl(text).count.get(), 2, "{text}");
    }
}

#[test]
fn multipliers() {
    assert_eq!(rl("5/10m").period, secs(600));
    assert_eq!(rl("1/90s").period, secs(90));
    assert_eq!(rl("4/2hours").period, secs(7200));
    assert_eq!(rl("1/1d").period, secs(86_400));
    assert_eq!(rl("7/ 3 days").period, secs(3 * 86_400));
}

#[test]
fn whitespace_is_optional() {
    assert_eq!(rl(" 2 / hour "), rl("2/hour"));
    assert_eq!(rl("5/ 10m"), rl("5/10m"));
    assert_eq!(rl("5 /10 m"), rl("5/10m"));
}

#[test]
fn bad_rate_limits_say_what_is_wrong() {
    for (text, needle) in [
        ("", "missing '/'"),
        ("2hour", "missing '/'"),
        ("0/h", "at least 1"),
        ("-1/h", "not a whole number"),
        ("x/h", "not a whole number"),
        ("99999999999/h", "count 99999999999 is too large"),
        ("/h", "not a whole number"),
        ("2/", "missing unit"),
        ("2/10", "missing unit"),
        ("2/0m", "longer than zero"),
        ("2/fortnight", "unknown unit"),
        ("2/1.5h", "unknown unit"),
        ("2/h/m", "unknown unit"),
        ("2/99999999999999999999999m", "too large"),
        ("2/999999999999999999d", "too long"),
    ] {
        match text.parse::<RateLimit>() {
            Ok(r) => panic!("{text:?} parsed as {r:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("failed to parse rate limit"), "{msg}");
                assert!(msg.contains(needle), "{text:?}: {msg}");
                assert!(msg.contains("2/hour"), "the fix is shown: {msg}");
            }
        }
    }
}

#[test]
fn display_is_canonical_and_round_trips() {
    for (text, canonical) in [
        ("2/h", "2/hour"),
        ("2/hour", "2/hour"),
        ("2/60m", "2/hour"),
        ("5/10m", "5/10m"),
        ("1/s", "1/second"),
        ("1/90s", "1/90s"),
        ("3/day", "3/day"),
        ("3/24h", "3/day"),
        ("10/minute", "10/minute"),
        ("1/120s", "1/2m"),
        ("1/48h", "1/2d"),
    ] {
        let r = rl(text);
        assert_eq!(r.to_string(), canonical, "{text}");
        assert_eq!(rl(canonical), r, "{canonical}");
    }
}

#[test]
fn display_rounds_sub_second_periods_up() {
    let r = RateLimit {
        count: NonZeroU32::MIN,
        period: Duration::from_millis(1500),
    };
    assert_eq!(r.to_string(), "1/2s");
}

#[test]
fn interval_spreads_the_count_over_the_period() {
    assert_eq!(rl("2/hour").interval(), secs(1800));
    assert_eq!(rl("5/10m").interval(), secs(120));
}

#[test]
fn rate_limit_serde_uses_the_text_form() -> Result<(), serde_json::Error> {
    let json = serde_json::to_string(&rl("5/10m"))?;
    assert_eq!(json, "\"5/10m\"");
    let back: RateLimit = serde_json::from_str("\"2/h\"")?;
    assert_eq!(back, rl("2/hour"));
    assert!(serde_json::from_str::<RateLimit>("\"2/week\"").is_err());
    Ok(())
}

#[test]
fn durations() -> Result<(), SettingsError> {
    assert_eq!(parse_duration("3600")?, secs(3600));
    assert_eq!(parse_duration(" 7200 ")?, secs(7200));
    assert_eq!(parse_duration("2h")?, secs(7200));
    assert_eq!(parse_duration("1h 30m")?, secs(5400));
    assert_eq!(parse_duration("10m")?, secs(600));
    for bad in ["", "  ", "abc", "-5", "1.5", "99999999999999999999999"] {
        let err = parse_duration(bad).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|m| m.starts_with("failed to parse duration")),
            "{bad:?}: {err:?}"
        );
    }
    Ok(())
}

#[test]
fn format_duration_round_trips() -> Result<(), SettingsError> {
    for d in [secs(1), secs(86_400), Duration::from_millis(1500)] {
        assert_eq!(parse_duration(&format_duration(d))?, d);
    }
    assert_eq!(format_duration(secs(7200)), "7200");
    Ok(())
}

#[test]
fn defaults() {
    let s = Settings::default();
    assert_eq!(s.dormancy_period, secs(86_400));
    assert_eq!(s.warmup_ratelimit, rl("2/hour"));
    assert!(s.ratelimit_enabled);
    assert_eq!(s.sweep_interval, secs(3600));
    assert!(s.warnings().is_empty());
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn missing_keys_take_defaults() -> Result<(), SettingsError> {
    assert_eq!(Settings::from_data(&BTreeMap::new())?, Settings::default());
    let s = Settings::from_data(&data(&[(DORMANCY_PERIOD_KEY, "7200")]))?;
    assert_eq!(s.dormancy_period, secs(7200));
    assert_eq!(s.warmup_ratelimit, Settings::default().warmup_ratelimit);
    Ok(())
}

#[test]
fn seed_000_example_reads() -> Result<(), SettingsError> {
    let s = Settings::from_data(&data(&[
        ("orgDormancyPeriodSecs", "7200"),
        ("orgWarmupRatelimitStr", "2/hour"),
        ("ratelimitEnabled", "false"),
    ]))?;
    assert_eq!(s.dormancy_period, secs(7200));
    assert_eq!(s.warmup_ratelimit, rl("2/h"));
    assert!(!s.ratelimit_enabled);
    assert_eq!(s.sweep_interval, secs(3600));
    Ok(())
}

#[test]
fn every_field_is_read() -> Result<(), SettingsError> {
    let s = Settings::from_data(&data(&[
        (DORMANCY_PERIOD_KEY, "2h"),
        (WARMUP_RATELIMIT_KEY, "5/10m"),
        (RATELIMIT_ENABLED_KEY, " TRUE "),
        (SWEEP_INTERVAL_KEY, "300"),
    ]))?;
    assert_eq!(
        s,
        Settings {
            dormancy_period: secs(7200),
            warmup_ratelimit: rl("5/10m"),
            ratelimit_enabled: true,
            sweep_interval: secs(300),
        }
    );
    Ok(())
}

#[test]
fn bad_values_name_key_and_value() {
    for (key, value) in [
        (DORMANCY_PERIOD_KEY, "soon"),
        (DORMANCY_PERIOD_KEY, "0"),
        (WARMUP_RATELIMIT_KEY, "2/fortnight"),
        (WARMUP_RATELIMIT_KEY, "0/h"),
        (RATELIMIT_ENABLED_KEY, "maybe"),
        (SWEEP_INTERVAL_KEY, "-1"),
        (SWEEP_INTERVAL_KEY, "0s"),
    ] {
        match Settings::from_data(&data(&[(key, value)])) {
            Ok(s) => panic!("{key}={value} gave {s:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("failed to read setting {key}={value:?}")),
                    "{msg}"
                );
            }
        }
    }
}

#[test]
fn booleans_accept_common_spellings() -> Result<(), SettingsError> {
    for (text, expected) in [
        ("true", true),
        ("True", true),
        ("yes", true),
        ("1", true),
        ("on", true),
        ("false", false),
        ("FALSE", false),
        ("no", false),
        ("0", false),
        ("off", false),
    ] {
        let s = Settings::from_data(&data(&[(RATELIMIT_ENABLED_KEY, text)]))?;
        assert_eq!(s.ratelimit_enabled, expected, "{text}");
    }
    Ok(())
}

#[test]
fn to_data_round_trips() -> Result<(), SettingsError> {
    let cases = [
        Settings::default(),
        Settings {
            dormancy_period: secs(7200),
            warmup_ratelimit: rl("5/10m"),
            ratelimit_enabled: false,
            sweep_interval: secs(60),
        },
        Settings {
            dormancy_period: Duration::from_millis(90_500),
            warmup_ratelimit: rl("1/90s"),
            ratelimit_enabled: true,
            sweep_interval: secs(1),
        },
    ];
    for s in cases {
        let d = s.to_data();
        assert_eq!(Settings::from_data(&d)?, s, "{d:?}");
        assert!(Settings::unknown_keys(&d).is_empty());
    }
    let d = Settings::default().to_data();
    assert_eq!(d[DORMANCY_PERIOD_KEY], "86400");
    assert_eq!(d[WARMUP_RATELIMIT_KEY], "2/hour");
    assert_eq!(d[RATELIMIT_ENABLED_KEY], "true");
    assert_eq!(d[SWEEP_INTERVAL_KEY], "3600");
    Ok(())
}

#[test]
fn unknown_keys_are_reported() {
    let d = data(&[
        ("orgDormancyPeriodSec", "60"),
        (RATELIMIT_ENABLED_KEY, "true"),
    ]);
    assert_eq!(Settings::unknown_keys(&d), vec!["orgDormancyPeriodSec"]);
}

#[test]
fn rate_limit_period_longer_than_dormancy_warns() -> Result<(), SettingsError> {
    let s = Settings::from_data(&data(&[
        (DORMANCY_PERIOD_KEY, "3600"),
        (WARMUP_RATELIMIT_KEY, "1/day"),
    ]))?;
    let warnings = s.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(WARMUP_RATELIMIT_KEY),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("1day"), "{}", warnings[0]);
    assert!(warnings[0].contains("at most 1h"), "{}", warnings[0]);
    match s.validate() {
        Err(SettingsError::Unsafe { problems }) => assert_eq!(problems, warnings),
        other => panic!("expected Unsafe, got {other:?}"),
    }
    let msg = s
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.starts_with("failed to accept settings"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    Ok(())
}

#[test]
fn equal_periods_and_disabled_rate_limit_do_not_warn() -> Result<(), SettingsError> {
    let equal = Settings::from_data(&data(&[
        (DORMANCY_PERIOD_KEY, "3600"),
        (WARMUP_RATELIMIT_KEY, "2/hour"),
    ]))?;
    assert!(equal.warnings().is_empty());
    let disabled = Settings::from_data(&data(&[
        (DORMANCY_PERIOD_KEY, "3600"),
        (WARMUP_RATELIMIT_KEY, "1/day"),
        (RATELIMIT_ENABLED_KEY, "false"),
    ]))?;
    assert!(disabled.warnings().is_empty());
    assert_eq!(disabled.validate(), Ok(()));
    Ok(())
}

#[test]
fn validate_rejects_hand_built_zero_durations() {
    let s = Settings {
        dormancy_period: Duration::ZERO,
        sweep_interval: Duration::ZERO,
        ..Settings::default()
    };
    match s.validate() {
        Err(SettingsError::Unsafe { problems }) => {
            assert!(problems.iter().any(|p| p.contains(DORMANCY_PERIOD_KEY)));
            assert!(problems.iter().any(|p| p.contains(SWEEP_INTERVAL_KEY)));
        }
        other => panic!("expected Unsafe, got {other:?}"),
    }
}

#[test]
fn knative_config_defaults_match_knative() {
    let c = KnativeConfig::from_data(&BTreeMap::new());
    assert_eq!(c, KnativeConfig::default());
    assert!(!c.allow_zero_initial_scale);
    assert!(c.enable_scale_to_zero);
    assert_eq!(c.max_scale_limit, None);
}

#[test]
fn knative_config_is_lenient() {
    let c = KnativeConfig::from_data(&data(&[
        ("allow-zero-initial-scale", "True"),
        ("enable-scale-to-zero", "false"),
        ("max-scale-limit", "100"),
    ]));
    assert!(c.allow_zero_initial_scale);
    assert!(!c.enable_scale_to_zero);
    assert_eq!(c.max_scale_limit, Some(100));

    let odd = KnativeConfig::from_data(&data(&[
        ("allow-zero-initial-scale", "yes"),
        ("enable-scale-to-zero", "nope"),
        ("max-scale-limit", "lots"),
    ]));
    assert!(!odd.allow_zero_initial_scale, "Knative only reads \"true\"");
    assert!(!odd.enable_scale_to_zero);
    assert_eq!(odd.max_scale_limit, None);

    let zero = KnativeConfig::from_data(&data(&[("max-scale-limit", "0")]));
    assert_eq!(zero.max_scale_limit, None, "0 means no limit");
}
