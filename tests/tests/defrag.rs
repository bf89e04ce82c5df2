//! `kubectl s2z defrag` on the real control plane (API server, ReplicaSet controller, scheduler,
//! KWOK nodes), run through the real kubectl. No Knative controller runs there, so each test
//! plays Knative's autoscaler itself: it keeps every PodAutoscaler's `actualScale` equal to the
//! serving pods labelled with its revision, as Knative does.
//!
//! Each test makes its own tainted fake nodes; pods are steered by creating a node cordoned and
//! uncordoning it when replacements may land there.
//!
//! Needs `cargo build -p kubectl-s2z` first (`make test` does it).

mod defrag_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use defrag_support::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use s2z_tests::TestEnv;
use s2z_tests::env::eventually;
use s2z_tests::nodes::GPU_PRODUCT;
use serde_json::{Value, json};

const SAFE: &str = "Safe to defrag/remove node";

fn is_safe(line: &str) -> bool {
    line == SAFE
}

fn is_progress(line: &str) -> bool {
    line.starts_with("Revision ")
}

async fn node(env: &TestEnv, name: &str) -> Result<Node> {
    Ok(Api::<Node>::all(env.client.clone()).get(name).await?)
}

fn unschedulable(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn annotations(p: &Pod) -> std::collections::BTreeMap<String, String> {
    p.metadata.annotations.clone().unwrap_or_default()
}

fn labels(p: &Pod) -> std::collections::BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

fn controlled(p: &Pod) -> bool {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true))
}

/// `(uid, s2z.dev/defrag-orphaned-at)` of each of the revision's pods on `node`.
async fn orphaned_at(env: &TestEnv, rev: &Rev, node: &str) -> Result<BTreeSet<(String, String)>> {
    Ok(pods_of(env, rev)
        .await?
        .iter()
        .filter(|p| node_of(p) == node)
        .map(|p| {
            let orphaned_at = annotations(p)
                .get("s2z.dev/defrag-orphaned-at")
                .cloned()
                .unwrap_or_default();
            (p.metadata.uid.clone().unwrap_or_default(), orphaned_at)
        })
        .collect())
}

#[tokio::test]
async fn two_revisions_reach_safe_only_after_their_replacements_are_ready_elsewhere() -> Result<()>
{
    // node0 is emptied; node1 starts cordoned so that every pod lands on node0 first.
    let fx = Fixture::new("defrag-safe", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let one = revision(env, ns, "one-00001", 1, true, json!({})).await?;
    let two = revision(env, ns, "two-00001", 2, true, json!({})).await?;
    wait_serving(env, &one, 1, Some(&nodes[0])).await?;
    wait_serving(env, &two, 2, Some(&nodes[0])).await?;
    wait_scale(env, &one, 1).await?;
    wait_scale(env, &two, 2).await?;

    let mut run = spawn(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "5m"],
    )?;
    run.line("the first progress line", is_progress).await?;

    // Acted: cordoned, and all three pods orphaned with their records, still serving.
    ensure!(
        unschedulable(&node(env, &nodes[0]).await?),
        "node0 is not cordoned"
    );
    for rev in [&one, &two] {
        let pods = pods_of(env, rev).await?;
        let orphans: Vec<&Pod> = pods.iter().filter(|p| node_of(p) == nodes[0]).collect();
        for o in &orphans {
            let a = annotations(o);
            ensure!(!controlled(o), "{:?} still has an owner", o.metadata.name);
            ensure!(
                !labels(o).contains_key("pod-template-hash"),
                "hash label still there"
            );
            ensure!(
                a.get("s2z.dev/defrag-from") == Some(&nodes[0]),
                "from: {a:?}"
            );
            ensure!(
                a.get("s2z.dev/defrag-owner")
                    .is_some_and(|o| o.starts_with(&rev.deployment)),
                "{a:?}"
            );
            ensure!(a.contains_key("s2z.dev/defrag-hash"), "{a:?}");
            ensure!(serving(o), "an orphan stopped serving");
        }
    }

    // Replacements cannot run anywhere yet (node1 is cordoned): not safe, however long we wait.
    run.no_line("Safe", Duration::from_secs(3), is_safe).await?;

    // Let them land on node1. Safe must follow, and only once they serve there.
    set_cordon(env, &nodes[1], false).await?;
    run.line("Safe", is_safe).await?;
    for (rev, count) in [(&one, 1), (&two, 2)] {
        let replacements: Vec<Pod> = pods_of(env, rev)
            .await?
            .into_iter()
            .filter(|p| node_of(p) == nodes[1] && serving(p) && controlled(p))
            .collect();
        ensure!(
            replacements.len() == count,
            "{}: {} serving replacements on node1 at Safe, want {count}",
            rev.name,
            replacements.len()
        );
    }
    let (status, stdout, stderr) = run.finish().await?;
    ensure!(
        status.code() == Some(0),
        "exit {status}: {stderr}\n{stdout}"
    );
    for want in [
        format!(
            "Node {}: {GPU_PRODUCT}, 3/8 GPUs allocated, schedulable",
            nodes[0]
        ),
        format!("1x {GPU_PRODUCT}"),
        format!(
            "Node {} has been cordoned (marked unschedulable).",
            nodes[0]
        ),
        "Revision one-00001 - 1 extra needed - current_scale=1 replicas=1 initial_scale=1".into(),
        "Revision two-00001 - 2 extra needed - current_scale=2 replicas=2 initial_scale=2".into(),
        "Revision two-00001 - 0 extra needed - current_scale=4 replicas=2 initial_scale=2".into(),
        format!("kubectl drain {} --ignore-daemonsets --force", nodes[0]),
    ] {
        ensure!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    ensure!(stdout.matches(" orphaned\n").count() == 3, "{stdout}");

    fx.finish().await
}

#[tokio::test]
async fn a_revision_that_scales_down_mid_run_is_safe_by_the_current_replicas_rule() -> Result<()> {
    // node1 holds 2 GPUs: two pods fill it, so the replacement of node0's pod cannot run.
    let fx = Fixture::new("defrag-scaledown", &[8, 2], &[true, false]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let rev = revision(env, ns, "m-00001", 2, true, json!({})).await?;
    wait_serving(env, &rev, 2, Some(&nodes[1])).await?;
    set_cordon(env, &nodes[0], false).await?;
    scale(env, &rev, 3).await?;
    wait_serving(env, &rev, 3, None).await?;
    wait_scale(env, &rev, 3).await?;

    let mut run = spawn(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "5m"],
    )?;
    run.line("the first progress line", |l| {
        l == "Revision m-00001 - 1 extra needed - current_scale=3 replicas=3 initial_scale=3"
    })
    .await?;
    run.no_line("Safe", Duration::from_secs(2), is_safe).await?;

    // The autoscaler scales the model down to 2: the ReplicaSet drops the pending replacement;
    // 2 replicas + the orphan serve, which is current_replicas + m.
    scale(env, &rev, 2).await?;
    run.line("the scale-down line", |l| {
        l == "Revision m-00001 - 0 extra needed - current_scale=3 replicas=2 initial_scale=3"
    })
    .await?;
    run.line("Safe", is_safe).await?;
    let (status, stdout, stderr) = run.finish().await?;
    ensure!(
        status.code() == Some(0),
        "exit {status}: {stderr}\n{stdout}"
    );

    fx.finish().await
}

#[tokio::test]
async fn a_timeout_exits_8_says_what_is_pending_and_how_to_resume_or_abort() -> Result<()> {
    let fx = Fixture::new("defrag-timeout", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let rev = revision(env, ns, "t-00001", 1, true, json!({})).await?;
    wait_serving(env, &rev, 1, Some(&nodes[0])).await?;
    wait_scale(env, &rev, 1).await?;

    let (code, stdout, stderr) = run(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "2s"],
    )
    .await?;
    ensure!(code == 8, "exit {code}: {stderr}\n{stdout}");
    ensure!(
        stdout.contains("Revision t-00001 - 1 extra needed"),
        "{stdout}"
    );
    ensure!(!stdout.contains(SAFE), "{stdout}");
    let want = format!(
        "error: failed to see node/{} become safe to drain within 2s: revision {ns}/t-00001 needs 1 more ready pod(s)",
        nodes[0]
    );
    ensure!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    ensure!(
        stderr.contains(&format!("kubectl s2z defrag {} --yes", nodes[0])),
        "{stderr}"
    );
    ensure!(
        stderr.contains(&format!("kubectl s2z defrag {} --abort --yes", nodes[0])),
        "{stderr}"
    );

    // The same, machine-readable: the document names the outcome and the next commands.
    let (code, stdout, stderr) = run(
        &env.plane,
        &[
            "defrag",
            &nodes[0],
            "--yes",
            "--timeout",
            "1s",
            "-o",
            "json",
        ],
    )
    .await?;
    ensure!(code == 8, "exit {code}: {stderr}");
    let doc: Value = serde_json::from_str(&stdout).with_context(|| stdout.clone())?;
    ensure!(
        doc["kind"] == "DefragReport" && doc["outcome"] == "TimedOut",
        "{doc}"
    );
    ensure!(doc["resumed"] == true, "{doc}");
    ensure!(doc["revisions"][0]["extraNeeded"] == 1, "{doc}");
    ensure!(
        doc["next"][1] == format!("kubectl s2z defrag {} --abort --yes", nodes[0]),
        "{doc}"
    );
    ensure!(
        stderr.contains("Revision t-00001"),
        "progress goes to stderr with -o json: {stderr}"
    );

    let (code, _, stderr) = run(&env.plane, &["defrag", &nodes[0], "--abort", "--yes"]).await?;
    ensure!(code == 0, "abort exit {code}: {stderr}");

    fx.finish().await
}

#[tokio::test]
async fn a_killed_or_interrupted_run_is_resumed_by_running_it_again() -> Result<()> {
    let fx = Fixture::new("defrag-resume", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let rev = revision(env, ns, "r-00001", 2, true, json!({})).await?;
    wait_serving(env, &rev, 2, Some(&nodes[0])).await?;
    wait_scale(env, &rev, 2).await?;

    // Killed outright (SIGKILL) while waiting.
    let mut first = spawn(&env.plane, &["defrag", &nodes[0], "--yes"])?;
    first.line("the first progress line", is_progress).await?;
    first.signal("KILL")?;
    let (status, _, _) = first.finish().await?;
    ensure!(
        status.code().is_none(),
        "expected death by signal, got {status}"
    );

    let n = node(env, &nodes[0]).await?;
    ensure!(unschedulable(&n), "the node must stay cordoned");
    let started = n
        .metadata
        .annotations
        .unwrap_or_default()
        .get("s2z.dev/defrag-started-at")
        .cloned()
        .context("no start annotation on the node")?;
    let before: BTreeSet<(String, String)> = orphaned_at(env, &rev, &nodes[0]).await?;
    ensure!(
        before.len() == 2 && before.iter().all(|(_, at)| !at.is_empty()),
        "{before:?}"
    );

    // The leftovers are visible cluster-wide.
    let (code, stdout, stderr) = run(&env.plane, &["defrag", "--list", "-o", "json"]).await?;
    ensure!(code == 0, "list exit {code}: {stderr}");
    let doc: Value = serde_json::from_str(&stdout)?;
    let listed = doc["items"].as_array().map(|items| {
        items
            .iter()
            .filter(|i| i["node"] == nodes[0].as_str())
            .count()
    });
    ensure!(listed == Some(2), "{doc}");

    // Ctrl-C while waiting: a clean stop, exit 130, and how to go on.
    let mut second = spawn(&env.plane, &["defrag", &nodes[0], "--yes"])?;
    second
        .line("the resumed progress line", is_progress)
        .await?;
    second.signal("INT")?;
    let (status, stdout, stderr) = second.finish().await?;
    ensure!(status.code() == Some(130), "exit {status}: {stderr}");
    ensure!(stdout.contains("Resuming the defrag"), "{stdout}");
    ensure!(
        stdout.contains(&format!("Interrupted: node {} stays cordoned", nodes[0])),
        "{stdout}"
    );
    ensure!(
        stderr.contains(&format!("kubectl s2z defrag {} --abort --yes", nodes[0])),
        "{stderr}"
    );

    // Room for the replacements; the third run picks up the same orphans and finishes.
    set_cordon(env, &nodes[1], false).await?;
    let (code, stdout, stderr) = run(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "2m"],
    )
    .await?;
    ensure!(code == 0, "exit {code}: {stderr}\n{stdout}");
    ensure!(
        stdout.contains(&format!("started at {started}: 2 pod(s) already orphaned")),
        "{stdout}"
    );
    ensure!(
        stdout.contains("already orphaned") && !stdout.contains(" orphaned\n"),
        "{stdout}"
    );
    ensure!(stdout.contains(SAFE), "{stdout}");
    let after: BTreeSet<(String, String)> = orphaned_at(env, &rev, &nodes[0]).await?;
    ensure!(
        before == after,
        "the orphans changed: {before:?} -> {after:?}"
    );

    fx.finish().await
}

#[tokio::test]
async fn abort_hands_every_orphan_back_without_a_capacity_dip() -> Result<()> {
    let fx = Fixture::new("defrag-abort", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    let rev = revision(env, ns, "a-00001", 2, true, json!({})).await?;
    let originals: BTreeSet<String> = wait_serving(env, &rev, 2, Some(&nodes[0]))
        .await?
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    wait_scale(env, &rev, 2).await?;

    // A defrag that cannot finish: two orphans serving, two replacements pending.
    let (code, _, stderr) = run(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "2s"],
    )
    .await?;
    ensure!(code == 8, "exit {code}: {stderr}");
    eventually("2 pending replacements", WAIT, || async {
        let pending = pods_of(env, &rev)
            .await?
            .iter()
            .filter(|p| controlled(p))
            .count();
        Ok((pending == 2).then_some(()))
    })
    .await?;

    // Watch serving capacity from here on: it must never drop below the 2 pods of the start.
    let min_serving = Arc::new(AtomicI64::new(i64::MAX));
    let watch = {
        let min = min_serving.clone();
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
        let selector = format!("{REVISION}={}", rev.name);
        tokio::spawn(async move {
            let mut live = std::collections::BTreeMap::new();
            let mut stream = watcher(pods, watcher::Config::default().labels(&selector))
                .default_backoff()
                .boxed();
            let mut listed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::InitApply(p) | Event::Apply(p)) => {
                        live.insert(p.metadata.uid.clone().unwrap_or_default(), serving(&p));
                    }
                    Ok(Event::Delete(p)) => {
                        live.remove(p.metadata.uid.as_deref().unwrap_or_default());
                    }
                    Ok(Event::InitDone) => listed = true,
                    _ => {}
                }
                if listed {
                    let n = live.values().filter(|s| **s).count() as i64;
                    min.fetch_min(n, Ordering::SeqCst);
                }
            }
        })
    };
    eventually("the capacity watch", WAIT, || async {
        Ok((min_serving.load(Ordering::SeqCst) != i64::MAX).then_some(()))
    })
    .await?;

    let (code, stdout, stderr) =
        run(&env.plane, &["defrag", &nodes[0], "--abort", "--yes"]).await?;
    ensure!(code == 0, "abort exit {code}: {stderr}\n{stdout}");
    ensure!(
        stdout.contains(&format!("Node {} uncordoned.", nodes[0])),
        "{stdout}"
    );
    ensure!(
        stdout.contains(
            "Abort complete: 2 pod(s) handed back, 0 surplus pod(s) deleted, no orphan left."
        ),
        "{stdout}"
    );

    // The ReplicaSet adopted both orphans and dropped its pending replacements: exactly the
    // original pods remain, owned, unmarked.
    let settled = eventually(
        "the ReplicaSet to settle on the original pods",
        WAIT,
        || async {
            let pods: Vec<Pod> = pods_of(env, &rev)
                .await?
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let uids: BTreeSet<String> =
                pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            Ok((uids == originals && pods.iter().all(controlled)).then_some(pods))
        },
    )
    .await?;
    for p in &settled {
        ensure!(
            labels(p).contains_key("pod-template-hash"),
            "hash not restored"
        );
        ensure!(!labels(p).contains_key(ORPHAN_LABEL), "orphan label left");
        ensure!(
            !annotations(p)
                .keys()
                .any(|k| k.starts_with("s2z.dev/defrag")),
            "annotations left"
        );
    }
    let n = node(env, &nodes[0]).await?;
    ensure!(!unschedulable(&n), "node still cordoned");
    ensure!(
        !n.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with("s2z.dev/defrag")),
        "node annotations left"
    );
    let rs = Api::<ReplicaSet>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    ensure!(
        rs.items
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| s.replicas == 2)),
        "replicas"
    );
    let (code, stdout, _) = run(&env.plane, &["defrag", "--list", &nodes[0]]).await?;
    ensure!(
        code == 0 && stdout.contains("No pods orphaned by s2z defrag."),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let min = min_serving.load(Ordering::SeqCst);
    ensure!(
        min >= 2,
        "serving capacity dipped to {min} during the abort"
    );
    watch.abort();

    // Nothing left to abort now.
    let (code, _, stderr) = run(&env.plane, &["defrag", &nodes[0], "--abort", "--yes"]).await?;
    ensure!(code == 10, "second abort exit {code}: {stderr}");

    fx.finish().await
}

/// resourceVersions of everything defrag could touch in the namespace, and of the node.
async fn versions(env: &TestEnv, ns: &str, node_name: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let rv = |kind: &str, name: Option<String>, rv: Option<String>| {
        (
            format!("{kind}/{}", name.unwrap_or_default()),
            rv.unwrap_or_default(),
        )
    };
    let n = node(env, node_name).await?;
    out.push(rv("node", n.metadata.name, n.metadata.resource_version));
    let lp = ListParams::default();
    for p in Api::<Pod>::namespaced(env.client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(rv("pod", p.metadata.name, p.metadata.resource_version));
    }
    for d in Api::<Deployment>::namespaced(env.client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(rv(
            "deployment",
            d.metadata.name,
            d.metadata.resource_version,
        ));
    }
    for r in Api::<ReplicaSet>::namespaced(env.client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(rv(
            "replicaset",
            r.metadata.name,
            r.metadata.resource_version,
        ));
    }
    for pdb in Api::<PodDisruptionBudget>::namespaced(env.client.clone(), ns)
        .list(&lp)
        .await?
        .items
    {
        out.push(rv("pdb", pdb.metadata.name, pdb.metadata.resource_version));
    }
    for pa in Api::<DynamicObject>::namespaced_with(env.client.clone(), ns, &pa_resource())
        .list(&lp)
        .await?
        .items
    {
        out.push(rv("pa", pa.metadata.name, pa.metadata.resource_version));
    }
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn dry_run_reports_every_blocker_and_writes_nothing() -> Result<()> {
    let fx = Fixture::new("defrag-dryrun", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    // A model that must not be disrupted (karpenter), ...
    let model = revision(
        env,
        ns,
        "b-00001",
        1,
        true,
        json!({"karpenter.sh/do-not-disrupt": "true"}),
    )
    .await?;
    // ... a plain Deployment behind a budget that allows no disruption, ...
    let db: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {
                "nodeSelector": {"s2z.dev/test": env.id},
                "tolerations": [{"key": "s2z.dev/test", "operator": "Exists"}],
                "containers": [{"name": "db", "image": "example.invalid/db:1"}]}}},
    }))?;
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &db)
        .await?;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}},
    }))?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(env.client.clone(), ns);
    pdbs.create(&PostParams::default(), &pdb).await?;
    // ... a bare pod the cluster autoscaler must not evict, ...
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "scratch", "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
        "spec": {"nodeName": nodes[0], "tolerations": [{"key": "s2z.dev/test", "operator": "Exists"}],
            "containers": [{"name": "c", "image": "example.invalid/c:1"}]},
    }))?;
    Api::<Pod>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &bare)
        .await?;
    // ... and a DaemonSet pod, which defrag ignores.
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                "nodeSelector": {"s2z.dev/test": env.id},
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "agent", "image": "example.invalid/agent:1"}]}}},
    }))?;
    Api::<DaemonSet>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &ds)
        .await?;

    wait_serving(env, &model, 1, Some(&nodes[0])).await?;
    wait_scale(env, &model, 1).await?;
    eventually("the budget to allow no disruption", WAIT, || async {
        let p = pdbs.get("db").await?;
        let s = p.status.unwrap_or_default();
        Ok((s.observed_generation.is_some()
            && s.current_healthy == Some(1)
            && s.disruptions_allowed == Some(0))
        .then_some(()))
    })
    .await?;
    eventually(
        "db, scratch and agent pods running on node0",
        WAIT,
        || async {
            let pods = Api::<Pod>::namespaced(env.client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items;
            let on0 = pods
                .iter()
                .filter(|p| {
                    node_of(p) == nodes[0]
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count();
            Ok((on0 >= 4).then_some(()))
        },
    )
    .await?;

    let before = versions(env, ns, &nodes[0]).await?;
    let (code, stdout, stderr) = run(&env.plane, &["defrag", &nodes[0], "--dry-run"]).await?;
    ensure!(code == 0, "exit {code}: {stderr}\n{stdout}");
    for want in [
        "PodDisruptionBudget db allows no disruption",
        "cluster-autoscaler.kubernetes.io/safe-to-evict=false",
        "karpenter.sh/do-not-disrupt=true",
        "left for drain: no controller",
        "left for drain: owned by a ReplicaSet",
        "ignore: DaemonSet",
        "orphan",
        "Blockers (the drain will wait on or refuse these pods):",
        "Dry run: nothing was changed.",
    ] {
        ensure!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let (code, stdout, stderr) = run(
        &env.plane,
        &["defrag", &nodes[0], "--dry-run", "-o", "json"],
    )
    .await?;
    ensure!(code == 0, "exit {code}: {stderr}");
    let doc: Value = serde_json::from_str(&stdout).with_context(|| stdout.clone())?;
    ensure!(doc["outcome"] == "DryRun", "{doc}");
    let classes: BTreeSet<String> = doc["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["class"].as_str().map(String::from))
        .collect();
    ensure!(
        classes == BTreeSet::from(["knative".into(), "leftForDrain".into(), "daemonset".into()]),
        "{classes:?}"
    );
    let blocked = doc["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["blockers"].as_array().is_some_and(|b| !b.is_empty()))
        .count();
    ensure!(blocked == 3, "{doc}");

    // The candidate ranking sees the same blockers: the empty node ranks first.
    let selector = format!("s2z.dev/test={}", env.id);
    let (code, stdout, stderr) = run(
        &env.plane,
        &["defrag", "--candidates", "-l", &selector, "-o", "json"],
    )
    .await?;
    ensure!(code == 0, "exit {code}: {stderr}");
    let doc: Value = serde_json::from_str(&stdout)?;
    ensure!(doc["items"][0]["node"] == nodes[1].as_str(), "{doc}");
    ensure!(doc["items"][1]["node"] == nodes[0].as_str(), "{doc}");
    ensure!(doc["items"][1]["blockers"].as_u64() >= Some(2), "{doc}");
    ensure!(doc["items"][1]["knativePods"] == 1, "{doc}");

    let after = versions(env, ns, &nodes[0]).await?;
    // The fake autoscaler and the controllers may write on their own; nothing in the plan may.
    ensure!(
        before == after,
        "--dry-run changed something:\nbefore {before:?}\nafter  {after:?}"
    );
    ensure!(
        !unschedulable(&node(env, &nodes[0]).await?),
        "cordoned by a dry run"
    );

    fx.finish().await
}

#[tokio::test]
async fn bad_input_fails_with_a_clear_message_and_its_exit_code() -> Result<()> {
    let fx = Fixture::bare("defrag-errors", &[8, 8], &[false, true]).await?;
    let (env, ns, nodes) = (&fx.env, &fx.ns, &fx.nodes);
    // A revision whose PodAutoscaler is missing.
    let rev = revision(env, ns, "x-00001", 1, false, json!({})).await?;
    wait_serving(env, &rev, 1, Some(&nodes[0])).await?;

    let missing = env.name("no-such-node");
    let (code, _, stderr) = run(&env.plane, &["defrag", &missing, "--dry-run"]).await?;
    ensure!(code == 9, "unknown node: exit {code}: {stderr}");
    ensure!(
        stderr.contains(&format!(
            "error: failed to find node/{missing}: no such node"
        )),
        "{stderr}"
    );

    let (code, _, stderr) = run(&env.plane, &["defrag", &nodes[1], "--yes"]).await?;
    ensure!(code == 10, "nothing to do: exit {code}: {stderr}");
    ensure!(
        stderr.contains("nothing to do: no Knative revision pod runs on it"),
        "{stderr}"
    );
    let marks = node(env, &nodes[1])
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    ensure!(
        !marks.contains_key("s2z.dev/defrag-started-at"),
        "nothing to do, yet the node was marked"
    );

    let (code, stdout, stderr) = run(&env.plane, &["defrag", &nodes[0], "--yes"]).await?;
    ensure!(code == 11, "missing PodAutoscaler: exit {code}: {stderr}");
    ensure!(
        stderr.contains(&format!("failed to read the scale of {ns}/x-00001")),
        "{stderr}"
    );
    ensure!(
        stdout.contains("missing"),
        "the inventory shows what is missing:\n{stdout}"
    );
    ensure!(
        !unschedulable(&node(env, &nodes[0]).await?),
        "cordoned despite the error"
    );

    let (code, _, stderr) = run_as(
        &env.plane,
        &env.plane.restricted_kubeconfig,
        &["defrag", &nodes[0], "--dry-run"],
    )
    .await?;
    ensure!(code == 6, "forbidden: exit {code}: {stderr}");
    ensure!(
        stderr.contains("forbidden") && stderr.contains("kubectl auth can-i get nodes"),
        "{stderr}"
    );

    // With a PodAutoscaler, stdin not a terminal and no --yes: refused, nothing written.
    let mut pa = DynamicObject::new("x-00001", &pa_resource());
    pa.data = json!({"spec": {"protocolType": "http1"}});
    Api::<DynamicObject>::namespaced_with(env.client.clone(), ns, &pa_resource())
        .create(&PostParams::default(), &pa)
        .await?;
    let before = versions(env, ns, &nodes[0]).await?;
    let (code, stdout, stderr) = run(&env.plane, &["defrag", &nodes[0]]).await?;
    ensure!(code == 3, "non-interactive: exit {code}: {stderr}");
    ensure!(stdout.contains("Plan:"), "{stdout}");
    ensure!(
        stderr.contains("stdin is not a terminal and --yes was not given"),
        "{stderr}"
    );
    ensure!(
        before == versions(env, ns, &nodes[0]).await?,
        "a refused run wrote something"
    );

    fx.finish().await
}
