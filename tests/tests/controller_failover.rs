//! Leader election on the real control plane: two `s2z-webhook` replicas share one Lease; the
//! leader is killed with SIGKILL while it flips an org of many revisions, and the other replica
//! takes the Lease within the lease duration and finishes the flip.
//!
//! Needs `cargo build -p s2z-webhook` first.

mod controller_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use controller_support::{Fixture, WAIT, time};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use s2z_core::labels::MIN_SCALE;
use s2z_core::org::OrgState;
use s2z_tests::env::eventually;
use s2z_tests::webhook::WebhookProcess;
use serde_json::json;

const REVISIONS: usize = 40;

/// The Lease's holder and version annotation.
async fn holder(fx: &Fixture) -> Result<(Option<String>, Option<String>)> {
    let leases: Api<Lease> = Api::namespaced(fx.env.client.clone(), &fx.sys);
    let lease = leases.get_opt("s2z-controller").await?;
    Ok(lease
        .map(|l| {
            let version = l
                .metadata
                .annotations
                .unwrap_or_default()
                .get("s2z.dev/version")
                .cloned();
            (l.spec.and_then(|s| s.holder_identity), version)
        })
        .unwrap_or((None, None)))
}

fn holds(process: &WebhookProcess, holder: Option<&str>) -> bool {
    match (process.pid(), holder) {
        (Some(pid), Some(holder)) => holder.ends_with(&format!("_{pid}")),
        _ => false,
    }
}

async fn scaled_to_zero(fx: &Fixture, ns: &str) -> Result<usize> {
    let list = fx.revisions(ns).list(&Default::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|r| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIN_SCALE))
                .map(String::as_str)
                == Some("0")
        })
        .count())
}

#[tokio::test]
async fn killing_the_leader_mid_flip_hands_over_within_the_lease() -> Result<()> {
    let mut fx = Fixture::new(
        "ctl-failover",
        &[
            ("orgDormancyPeriodSecs", "3600"),
            ("sweepIntervalSecs", "3600"),
        ],
    )
    .await?;
    let mut first = fx.webhook(&[]).await?;
    let mut second = fx.webhook(&[]).await?;

    let (leader, version) = eventually("a Lease holder", WAIT, || async {
        let (holder, version) = holder(&fx).await?;
        Ok(holder.map(|h| (h, version)))
    })
    .await?;
    ensure!(
        version.as_deref() == Some(env!("CARGO_PKG_VERSION")),
        "the holder writes s2z.dev/version: {version:?}"
    );
    let first_leads = holds(&first, Some(&leader));
    ensure!(
        first_leads || holds(&second, Some(&leader)),
        "holder {leader} is neither process"
    );
    let (leader_process, standby) = if first_leads {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    ensure!(
        leader_process
            .metric("s2z_webhook_controller_leader", &[])
            .await?
            == 1
            && standby.metric("s2z_webhook_controller_leader", &[]).await? == 0,
        "exactly one replica leads"
    );

    let name = fx.env.name("big");
    let ns = fx.org_namespace(&name, "big").await?;
    for i in 0..REVISIONS {
        fx.revision(&ns, &format!("app{i}-00001"), i % 3 == 0, &[])
            .await?;
    }
    fx.org("big", json!({"dormancyPeriodSecs": 8})).await?;
    let org = fx.wait_state(&name, OrgState::Active, WAIT).await?;
    eventually("every revision warm", WAIT, || async {
        let list = fx.revisions(&ns).list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .all(|r| {
                r.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MIN_SCALE))
                    .is_some()
            })
            .then_some(()))
    })
    .await?;

    // Kill the leader the moment it reports the flip: its patches are under way.
    let due = time(org.status.as_ref().and_then(|s| s.dormant_at.as_deref()))?;
    let until_due = (due - Utc::now())
        .to_std()
        .context("the org came due during setup")?;
    tokio::time::sleep(until_due.saturating_sub(Duration::from_millis(100))).await;
    let orgs = fx.orgs_api();
    loop {
        let state = orgs.get_status(&name).await?.status.and_then(|s| s.state);
        if state == Some(OrgState::Dormant) {
            break;
        }
        ensure!(
            Utc::now() - due < chrono::TimeDelta::seconds(10),
            "the leader never flipped the org"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader_process.kill();
    let killed = Instant::now();
    let done_at_kill = scaled_to_zero(&fx, &ns).await?;
    eprintln!(
        "leader killed {} ms after the due time; {done_at_kill}/{REVISIONS} revisions patched",
        (Utc::now() - due).num_milliseconds()
    );

    eventually("the standby holding the Lease", WAIT, || async {
        let (holder, _) = holder(&fx).await?;
        Ok(holds(standby, holder.as_deref()).then_some(()))
    })
    .await?;
    let took_lease = killed.elapsed();
    fx.wait_state(&name, OrgState::Dormant, WAIT).await?;
    eventually("every revision scaled to zero", WAIT, || async {
        Ok((scaled_to_zero(&fx, &ns).await? == REVISIONS).then_some(()))
    })
    .await?;
    let converged = killed.elapsed();
    eprintln!("standby took the Lease after {took_lease:?}; converged after {converged:?}");
    // The Lease lasts 3 s; the standby checks every 0.5 s.
    ensure!(
        took_lease <= Duration::from_secs(5),
        "failover took {took_lease:?}"
    );
    ensure!(
        converged <= Duration::from_secs(8),
        "convergence took {converged:?}"
    );
    ensure!(standby.metric("s2z_webhook_controller_leader", &[]).await? == 1);
    let status = fx.get_org(&name).await?.status.unwrap_or_default();
    ensure!(
        status.pynodes.scaled_to_zero + status.models.scaled_to_zero == REVISIONS as u32,
        "{status:?}"
    );

    // A clean shutdown hands the Lease over at once instead of letting it expire.
    leader_process.restart().await?;
    let stopped = Instant::now();
    standby.terminate(Duration::from_secs(30)).await?;
    eventually("the restarted replica holding the Lease", WAIT, || async {
        let (holder, _) = holder(&fx).await?;
        Ok(holds(leader_process, holder.as_deref()).then_some(()))
    })
    .await?;
    let handover = stopped.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    ensure!(
        handover <= Duration::from_secs(3),
        "released Lease taken after {handover:?}"
    );
    fx.cleanup().await
}
