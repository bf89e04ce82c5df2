//! `kubectl s2z settings` and `settings set`.

use anyhow::Result;
use serde_json::json;

use crate::support::{Fixture, s2z};

#[tokio::test]
async fn settings_show_and_set() -> Result<()> {
    let fx = Fixture::new("plg-settings").await?;

    let run = fx.s2z(&["settings"])?;
    run.code(0);
    assert!(
        run.stdout.contains(&format!(
            "defaults (no configmap/s2z-settings in {})",
            fx.sys
        )),
        "{run:#?}"
    );
    assert!(run.stdout.contains("1d"), "{run:#?}");

    // Seed 000's example, in human form; the ConfigMap is created.
    let run = fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "2h",
        "--warmup-ratelimit",
        "2/hour",
        "--ratelimit-enabled=false",
    ])?;
    run.code(0);
    assert!(run.stdout.contains("created"), "{run:#?}");
    assert!(
        run.stdout
            .contains("orgDormancyPeriodSecs: default 86400 (1d) -> 7200 (2h)"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("the controller re-evaluates every org now"),
        "{run:#?}"
    );
    let data = fx.settings_data().await?.unwrap_or_default();
    assert_eq!(
        data.get("orgDormancyPeriodSecs").map(String::as_str),
        Some("7200")
    );
    assert_eq!(
        data.get("orgWarmupRatelimitStr").map(String::as_str),
        Some("2/hour")
    );
    assert_eq!(
        data.get("ratelimitEnabled").map(String::as_str),
        Some("false")
    );

    let shown = fx.s2z(&["settings", "-o", "json"])?.json()?;
    assert_eq!(shown["kind"], "SettingsReport");
    assert_eq!(shown["settings"]["orgDormancyPeriodSecs"], 7200);
    assert_eq!(shown["settings"]["ratelimitEnabled"], false);
    assert_eq!(shown["defaulted"], json!(["sweepIntervalSecs"]));

    // Unsafe: a rate-limit period (1h) longer than the dormancy period (30m). Refused...
    let before = fx.settings_data().await?;
    fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "30m",
        "--ratelimit-enabled",
    ])?
    .fails(3, "longer than the dormancy period");
    assert_eq!(fx.settings_data().await?, before, "nothing written");
    // ...unless forced, and then it says what will happen.
    let run = fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "30m",
        "--ratelimit-enabled",
        "--force",
    ])?;
    run.code(0);
    assert!(
        run.stderr.contains("warning: applying anyway (--force)"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("a busy org may briefly go dormant"),
        "{run:#?}"
    );
    let data = fx.settings_data().await?.unwrap_or_default();
    assert_eq!(
        data.get("orgDormancyPeriodSecs").map(String::as_str),
        Some("1800")
    );

    // Bad values: usage errors, no usage text, nothing written.
    let before = fx.settings_data().await?;
    for (flag, value, message) in [
        (
            "--dormancy-period",
            "soon",
            "failed to read --dormancy-period: failed to parse duration \"soon\"",
        ),
        ("--dormancy-period", "0", "must be longer than zero"),
        (
            "--warmup-ratelimit",
            "2 per hour",
            "failed to read --warmup-ratelimit: rate limit \"2 per hour\"",
        ),
        ("--ratelimit-enabled", "maybe", "\"maybe\" is not a boolean"),
    ] {
        fx.s2z(&["settings", "set", flag, value])?.fails(2, message);
    }
    fx.s2z(&["settings", "set"])?.fails(2, "no setting given");
    assert_eq!(fx.settings_data().await?, before, "nothing written");

    // Dry run: checked by the API server, not written.
    let run = fx.s2z(&["settings", "set", "--dormancy-period", "4h", "--dry-run"])?;
    run.code(0);
    assert!(
        run.stdout.contains("would update") && run.stdout.contains("dry run"),
        "{run:#?}"
    );
    assert_eq!(fx.settings_data().await?, before);

    // An install namespace that does not exist.
    let nowhere = fx.env.name("nowhere");
    let run = s2z(
        &fx.env,
        &["-n", &nowhere, "settings", "set", "--dormancy-period", "2h"],
    )?;
    run.fails(5, &format!("namespace {nowhere} does not exist"));
    fx.cleanup().await
}
