use super::*;
use s2z_core::testing::map as data;

fn set(f: impl FnOnce(&mut SetArgs)) -> SetArgs {
    let mut args = SetArgs::default();
    f(&mut args);
    args
}

#[test]
fn human_values_become_seed_000_keys() -> Result<()> {
    let changes = resolve(&set(|a| {
        a.dormancy_period = Some("2h".into());
        a.warmup_ratelimit = Some("2/hour".into());
        a.ratelimit_enabled = Some("false".into());
        a.sweep_interval = Some("15m".into());
    }))?;
    assert_eq!(
        changes,
        data(&[
            ("orgDormancyPeriodSecs", "7200"),
            ("orgWarmupRatelimitStr", "2/hour"),
            ("ratelimitEnabled", "false"),
            ("sweepIntervalSecs", "900"),
        ])
    );
    let canonical = resolve(&set(|a| {
        a.warmup_ratelimit = Some(" 5 / 10 minutes ".into())
    }))?;
    assert_eq!(canonical["orgWarmupRatelimitStr"], "5/10m");
    Ok(())
}

#[test]
fn bad_values_are_usage_errors_naming_the_flag() {
    let cases = [
        set(|a| a.dormancy_period = Some("soon".into())),
        set(|a| a.dormancy_period = Some("0s".into())),
        set(|a| a.warmup_ratelimit = Some("2 per hour".into())),
        set(|a| a.warmup_ratelimit = Some("0/hour".into())),
        set(|a| a.ratelimit_enabled = Some("maybe".into())),
        SetArgs::default(),
    ];
    let messages: Vec<String> = cases
        .iter()
        .map(|args| match resolve(args) {
            Ok(changes) => panic!("accepted {changes:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
                e.to_string()
            }
        })
        .collect();
    insta::assert_debug_snapshot!(messages);
}

#[test]
fn unsafe_settings_need_force() {
    let current = data(&[("orgWarmupRatelimitStr", "2/hour")]);
    let changes = data(&[("orgDormancyPeriodSecs", "1800")]);
    let refused = plan("s2z-system", &current, &changes, false);
    match refused {
        Err(e) => {
            assert_eq!(e.exit_code(), crate::error::exit::REFUSED);
            assert!(e.to_string().contains("nothing was written"), "{e}");
            assert!(
                e.to_string().contains("longer than the dormancy period"),
                "{e}"
            );
        }
        Ok(plan) => panic!("accepted {plan:?}"),
    }
    let forced = plan("s2z-system", &current, &changes, true);
    match forced {
        Ok(plan) => {
            assert_eq!(plan.forced.len(), 1);
            assert_eq!(plan.settings.dormancy_period.as_secs(), 1800);
            assert_eq!(
                plan.diff,
                BTreeMap::from([(
                    "orgDormancyPeriodSecs".to_string(),
                    (None, "1800".to_string())
                )])
            );
        }
        Err(e) => panic!("{e}"),
    }
    // Disabling the rate limit makes the same period safe.
    let mut safe = changes.clone();
    safe.insert("ratelimitEnabled".into(), "false".into());
    assert!(plan("s2z-system", &current, &safe, false).is_ok());
}

#[test]
fn an_unchanged_value_is_no_diff() -> Result<()> {
    let current = data(&[("orgDormancyPeriodSecs", "7200")]);
    let plan = plan("s2z-system", &current, &current, false)?;
    assert!(plan.diff.is_empty());
    Ok(())
}

#[test]
fn a_bad_value_already_stored_is_reported() {
    let current = data(&[("orgWarmupRatelimitStr", "lots")]);
    let changes = data(&[("orgDormancyPeriodSecs", "7200")]);
    let err = plan("s2z-system", &current, &changes, false).err();
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("orgWarmupRatelimitStr"), "{text}");
}

#[test]
fn table_and_report() -> serde_json::Result<()> {
    let view = SettingsView::from_data(
        "s2z-system",
        Some(data(&[
            ("orgDormancyPeriodSecs", "7200"),
            ("ratelimitEnabled", "false"),
        ])),
    );
    insta::assert_snapshot!(render(&view, false));
    let report = serde_json::to_value(SettingsReport::of(&view))?;
    insta::assert_json_snapshot!(report, @r#"
    {
      "apiVersion": "s2z.dev/v1alpha1",
      "defaulted": [
        "orgWarmupRatelimitStr",
        "sweepIntervalSecs"
      ],
      "kind": "SettingsReport",
      "settings": {
        "orgDormancyPeriodSecs": 7200,
        "orgWarmupRatelimitStr": "2/hour",
        "ratelimitEnabled": false,
        "sweepIntervalSecs": 3600
      },
      "source": "configmap/s2z-settings in s2z-system",
      "warnings": []
    }
    "#);
    Ok(())
}
