//! `enable`, `disable`, `wake` and `sleep`: what each writes, and that unknown orgs write nothing.

use anyhow::Result;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::support::{Fixture, SLEEP, ago, org_row};

#[tokio::test]
async fn toggles_write_the_org() -> Result<()> {
    let mut fx = Fixture::new("plg-toggle").await?;
    let org = fx
        .env
        .org(
            "a",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(2 * 86_400)})),
        )
        .await?;

    let run = fx.s2z(&["disable", &org])?;
    run.code(0);
    assert_eq!(
        run.stdout,
        format!(
            "org/{org}: scale to zero disabled; the controller keeps its workloads warm now (Exempt)\n"
        )
    );
    assert!(!fx.get_org(&org).await?.spec.scale_to_zero_allowed);
    let again = fx.s2z(&["disable", &org])?;
    again.code(0);
    assert!(
        again.stdout.contains("unchanged, already exempt"),
        "{again:#?}"
    );

    // Sleep is refused for an exempt org, and writes nothing.
    fx.s2z(&["sleep", &org])?
        .fails(3, "exempt from scale to zero");
    let annotations = fx
        .get_org(&org)
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(!annotations.contains_key(SLEEP));

    let run = fx.s2z(&["enable", &org, "-o", "json"])?;
    run.code(0);
    assert_eq!(run.json()?["spec"]["scaleToZeroAllowed"], true);
    assert!(fx.get_org(&org).await?.spec.scale_to_zero_allowed);

    // Wake records activity now: the org is active again.
    let run = fx.s2z(&["wake", &org])?;
    run.code(0);
    assert!(
        run.stdout
            .contains("activity recorded now (Active, dormant in"),
        "{run:#?}"
    );
    let woken = fx.get_org(&org).await?;
    let at = woken
        .status
        .and_then(|s| s.last_activity_at)
        .unwrap_or_default();
    let at: Timestamp = at.parse()?;
    assert!(
        Timestamp::now().duration_since(at) < SignedDuration::from_secs(60),
        "{at}"
    );

    // Sleep makes it dormant until the next activity.
    let run = fx.s2z(&["sleep", &org])?;
    run.code(0);
    assert!(
        run.stdout.contains("put to sleep until its next activity"),
        "{run:#?}"
    );
    assert!(fx.has_sleep_request(&org).await?);
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(org_row(&report, &org)?["state"], "Dormant");

    // Waking removes the sleep request.
    fx.s2z(&["wake", &org])?.code(0);
    assert!(!fx.has_sleep_request(&org).await?);
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(org_row(&report, &org)?["state"], "Active");
    fx.cleanup().await
}

#[tokio::test]
async fn unknown_orgs_fail_with_exit_7_and_write_nothing() -> Result<()> {
    let mut fx = Fixture::new("plg-unknown").await?;
    let known = fx.env.org("a", json!({}), json!({}), None).await?;
    let missing = fx.env.name("nope");
    for cmd in ["enable", "disable", "wake", "sleep", "status", "sweep"] {
        let run = fx.s2z(&[cmd, &known, &missing])?;
        run.fails(7, &format!("failed to find org/{missing}: no such org"));
        assert!(run.stderr.contains("hint: "), "{run:#?}");
    }
    let org = fx.get_org(&known).await?;
    assert!(org.spec.scale_to_zero_allowed, "disable wrote nothing");
    assert!(
        org.metadata.annotations.unwrap_or_default().is_empty(),
        "sleep/sweep wrote nothing"
    );
    assert!(
        org.status.and_then(|s| s.last_activity_at).is_none(),
        "wake wrote nothing"
    );
    fx.cleanup().await
}
