//! Reaction time of `kubectl s2z defrag`: from the moment the node becomes safe (the
//! PodAutoscaler status write that satisfies seed 002's rule) to the "Safe to defrag/remove node"
//! line on the plugin's stdout. Target: p99 <= 200 ms.
//!
//! Runs against the local control plane through the real kubectl, like the integration tests:
//!
//!     cargo build -p kubectl-s2z && cargo run -p s2z-tests --example defrag_reaction -- 30
//!
//! Each run makes a one-pod revision on a private node, starts `defrag --yes`, waits until it
//! prints its first progress line (it is watching), then raises `actualScale` by one itself and
//! timestamps the Safe line as it arrives on the pipe. The replacement pod cannot be scheduled
//! (the other node is cordoned), so only the bench's write can make the node safe.
//! "from send" starts before the write is sent (an upper bound: it includes the write's own
//! round trip); "from ack" starts when the API server acknowledged it (the commit happened before).

#[path = "../tests/defrag_support/mod.rs"]
mod defrag_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use defrag_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use s2z_tests::TestEnv;
use s2z_tests::env::eventually;
use serde_json::json;
use tokio::time::Instant;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn set_scale(env: &TestEnv, rev: &Rev, scale: i64) -> Result<()> {
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &rev.ns, &pa_resource())
        .patch_status(
            &rev.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"actualScale": scale}})),
        )
        .await
        .context("patch actualScale")?;
    Ok(())
}

/// Puts the node back as it was: the revision and all its pods gone (so that no leftover
/// replacement lands on the node later), uncordoned, unmarked.
async fn reset(env: &TestEnv, rev: &Rev, node: &str) -> Result<()> {
    Api::<Deployment>::namespaced(env.client.clone(), &rev.ns)
        .delete(&rev.deployment, &DeleteParams::foreground())
        .await?;
    let pods = Api::<Pod>::namespaced(env.client.clone(), &rev.ns);
    let selector = ListParams::default().labels(&format!("{REVISION}={}", rev.name));
    eventually("the revision's pods to be gone", WAIT, || async {
        pods.delete_collection(&DeleteParams::default().grace_period(0), &selector)
            .await?;
        Ok(pods.list(&selector).await?.items.is_empty().then_some(()))
    })
    .await?;
    Api::<Node>::all(env.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"s2z.dev/defrag-started-at": null, "s2z.dev/defrag-cordoned": null}},
                "spec": {"unschedulable": false},
            })),
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("usage: defrag_reaction [RUNS]")?
        .unwrap_or(30);
    let fx = Fixture::bare("defrag-bench", &[64, 64], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for i in 0..runs {
        let rev = revision(env, ns, &format!("b{i}-00001"), 1, true, json!({})).await?;
        wait_serving(env, &rev, 1, Some(&nodes[0])).await?;
        set_scale(env, &rev, 1).await?;
        let mut run = spawn(
            &env.plane,
            &["defrag", &nodes[0], "--yes", "--timeout", "2m"],
        )?;
        run.line("the progress line", |l| {
            l.contains("1 extra needed - current_scale=1")
        })
        .await?;
        // Let the replacement's creation events pass, so only the bench's write is in flight.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        set_scale(env, &rev, 2).await?;
        let acked = Instant::now();
        let (at, _) = run
            .line("Safe", |l| l == "Safe to defrag/remove node")
            .await?;
        let (status, _, stderr) = run.finish().await?;
        ensure!(status.success(), "run {i}: {status}: {stderr}");
        from_send.push(at.duration_since(sent));
        from_ack.push(at.saturating_duration_since(acked));
        eprintln!(
            "run {:>3}: {} from send, {} from ack",
            i + 1,
            ms(at.duration_since(sent)),
            ms(at.saturating_duration_since(acked))
        );
        reset(env, &rev, &nodes[0]).await?;
    }
    from_send.sort();
    from_ack.sort();
    println!("defrag reaction time, condition true -> \"Safe\" line, {runs} runs:");
    println!("            p50        p90        p99        max");
    for (name, v) in [("from send", &from_send), ("from ack ", &from_ack)] {
        println!(
            "{name}   {:>8}   {:>8}   {:>8}   {:>8}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 90.0)),
            ms(percentile(v, 99.0)),
            ms(v[v.len() - 1])
        );
    }
    fx.finish().await
}
