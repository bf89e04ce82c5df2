//! `kubectl s2z status`: states, workloads, pods and GPUs, paging, warnings and `--watch`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use s2z_tests::TestEnv;
use s2z_tests::env::eventually;
use serde_json::{Value, json};

use crate::support::{Fixture, WAIT, ago, names, org_row, revision, s2z_command};

/// A private fake node with 8 GPUs, tainted so nothing else lands on it.
async fn gpu_node(env: &TestEnv) -> Result<String> {
    let names = s2z_tests::nodes::private_nodes(env, &[8], &[]).await?;
    names.into_iter().next().context("no node created")
}

/// A running revision pod holding `gpus` GPUs on `node`.
async fn gpu_pod(
    env: &TestEnv,
    ns: &str,
    name: &str,
    rev: &str,
    node: &str,
    gpus: u32,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"serving.knative.dev/revision": rev}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "s2z.dev/test", "operator": "Equal", "value": env.id, "effect": "NoSchedule"}],
            "containers": [{"name": "user-container", "image": "example.invalid/model:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually(
        &format!("pod {ns}/{name} running and Ready"),
        WAIT,
        || async {
            let status = pods.get(name).await?.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((status.phase.as_deref() == Some("Running") && ready).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn status_shows_states_workloads_pods_and_gpus() -> Result<()> {
    let mut fx = Fixture::new("plg-status").await?;
    fx.settings(&[
        ("orgDormancyPeriodSecs", "3600"),
        ("orgWarmupRatelimitStr", "2/hour"),
    ])
    .await?;
    let active = fx
        .env
        .org(
            "act",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(300), "state": "Active"})),
        )
        .await?;
    let dormant = fx
        .env
        .org(
            "dor",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(3 * 3600)})),
        )
        .await?;
    let exempt = fx
        .env
        .org("exm", json!({"scaleToZeroAllowed": false}), json!({}), None)
        .await?;
    let ns = fx.org_namespace("act-ns", &active).await?;
    let client = fx.env.client.clone();
    revision(
        &client,
        &ns,
        "web-00001",
        json!({}),
        json!({"autoscaling.knative.dev/min-scale": "1"}),
    )
    .await?;
    revision(
        &client,
        &ns,
        "bert-predictor-00001",
        json!({"serving.kserve.io/inferenceservice": "bert"}),
        json!({"autoscaling.knative.dev/min-scale": "0"}),
    )
    .await?;
    // A warm revision that wants 2 pods and has 1 Ready: it is listed as waiting for pods.
    revision(
        &client,
        &ns,
        "api-00001",
        json!({}),
        json!({"autoscaling.knative.dev/min-scale": "2"}),
    )
    .await?;
    let node = gpu_node(&fx.env).await?;
    gpu_pod(&fx.env, &ns, "web-a", "web-00001", &node, 1).await?;
    gpu_pod(&fx.env, &ns, "bert-a", "bert-predictor-00001", &node, 2).await?;
    gpu_pod(&fx.env, &ns, "api-a", "api-00001", &node, 0).await?;

    // The table: header with the settings, one row per org, totals.
    let run = fx.s2z(&["status", &active, &dormant, &exempt])?;
    run.code(0);
    assert!(
        run.stdout
            .starts_with("Dormancy period: 1h   Warm-up rate limit: 2/hour"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("ORG "), "{run:#?}");
    for (org, state) in [
        (&active, "Active"),
        (&dormant, "Dormant"),
        (&exempt, "Exempt"),
    ] {
        let line = run.stdout.lines().find(|l| l.starts_with(org.as_str()));
        assert!(
            line.is_some_and(|l| l.contains(state)),
            "{org} {state}: {run:#?}"
        );
    }
    assert!(
        run.stdout
            .contains("3 orgs: 1 active, 1 dormant, 1 exempt; 3 running pods, 3 GPUs held"),
        "{run:#?}"
    );
    let waiting = run
        .stdout
        .split_once("1 revision waiting for pods")
        .map(|(_, rest)| rest)
        .with_context(|| format!("no waiting section: {run:#?}"))?;
    assert!(
        waiting.lines().any(|l| l.starts_with(active.as_str())
            && l.contains(&format!("{ns}/api-00001"))
            && l.contains("1/2")),
        "{run:#?}"
    );

    // The JSON document.
    let report = fx
        .s2z(&["status", &active, &dormant, &exempt, "-o", "json"])?
        .json()?;
    assert_eq!(report["apiVersion"], "s2z.dev/v1alpha1");
    assert_eq!(report["kind"], "StatusReport");
    assert_eq!(report["settings"]["dormancyPeriodSecs"], 3600);
    let a = org_row(&report, &active)?;
    assert_eq!(a["state"], "Active");
    assert_eq!(a["pynodes"], json!({"total": 2, "warm": 2}));
    assert_eq!(a["models"], json!({"total": 1, "warm": 0}));
    assert_eq!(a["runningPods"], 3);
    assert_eq!(
        a["waitingForPods"],
        json!([{"namespace": ns, "name": "api-00001", "kind": "pynode", "ready": 1, "minScale": 2}])
    );
    assert_eq!(report["totals"]["waitingForPods"], 1);
    assert_eq!(a["gpus"], 3);
    assert_eq!(a["namespaces"], json!([ns]));
    assert!(a["dormantAt"].is_string());
    let d = org_row(&report, &dormant)?;
    assert_eq!(d["state"], "Dormant");
    assert!(d["dormantSince"].is_string(), "{d}");
    assert_eq!(org_row(&report, &exempt)?["allowed"], false);

    // Filters: by state, and by label selector (no names: the cluster-wide path).
    let dormant_only = fx
        .s2z(&[
            "status",
            &active,
            &dormant,
            &exempt,
            "--dormant",
            "-o",
            "json",
        ])?
        .json()?;
    assert_eq!(names(&dormant_only), vec![dormant.clone()]);
    let active_only = fx
        .s2z(&[
            "status",
            "-l",
            &format!("s2z.dev/test={}", fx.env.id),
            "--active",
            "-o",
            "json",
        ])?
        .json()?;
    assert_eq!(names(&active_only), vec![active.clone()]);
    let selected = fx
        .s2z(&[
            "status",
            "-l",
            &format!("s2z.dev/test={}", fx.env.id),
            "-o",
            "json",
        ])?
        .json()?;
    let mut all = vec![active.clone(), dormant.clone(), exempt.clone()];
    all.sort();
    assert_eq!(names(&selected), all);
    assert_eq!(
        org_row(&selected, &active)?["gpus"],
        3,
        "same numbers via the cluster-wide lists"
    );

    // YAML and wide.
    let yaml = fx.s2z(&["status", &active, "-o", "yaml"])?;
    yaml.code(0);
    let doc: Value = serde_yaml::from_str(&yaml.stdout)?;
    assert_eq!(doc["kind"], "StatusReport");
    let wide = fx.s2z(&["status", &active, "-o", "wide"])?;
    wide.code(0);
    assert!(
        wide.stdout.contains("NAMESPACES") && wide.stdout.contains(&ns),
        "{wide:#?}"
    );

    // Colour only when asked.
    assert!(!run.stdout.contains('\x1b'));
    let coloured = fx.s2z(&["status", &active, "--color=always"])?;
    assert!(coloured.stdout.contains("\x1b["), "{coloured:#?}");

    Api::<Node>::all(fx.env.client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .ok();
    fx.cleanup().await
}

#[tokio::test]
async fn status_pages_through_more_revisions_than_one_page() -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    // The plugin lists 500 objects per page by default; 520 revisions need a continue token.
    const COUNT: usize = 520;
    let mut fx = Fixture::new("plg-pages").await?;
    let org = fx.env.org("a", json!({}), json!({}), None).await?;
    let ns = fx.org_namespace("a-ns", &org).await?;
    let client = fx.env.client.clone();
    futures::stream::iter(0..COUNT)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let min = if i % 2 == 0 { "1" } else { "0" };
                revision(
                    &client,
                    &ns,
                    &format!("web-{i:05}"),
                    json!({}),
                    json!({"autoscaling.knative.dev/min-scale": min}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let selector = format!("s2z.dev/test={}", fx.env.id);
    // By name (lists in the org's namespace) and by selector (cluster-wide lists); with the
    // default chunk size, with 75 pages of 7, and in one request (`--chunk-size 0`).
    for args in [
        vec!["status", org.as_str()],
        vec!["status", "-l", selector.as_str()],
        vec!["status", org.as_str(), "--chunk-size", "7"],
        vec!["status", "-l", selector.as_str(), "--chunk-size=0"],
    ] {
        let mut args = args;
        args.extend(["-o", "json"]);
        let report = fx.s2z(&args)?.json()?;
        assert_eq!(
            org_row(&report, &org)?["pynodes"],
            json!({"total": COUNT, "warm": COUNT / 2}),
            "{args:?}"
        );
    }
    fx.cleanup().await
}

#[tokio::test]
async fn status_warns_when_the_rate_limit_outlasts_the_dormancy_period() -> Result<()> {
    let mut fx = Fixture::new("plg-warn").await?;
    fx.settings(&[
        ("orgDormancyPeriodSecs", "1800"),
        ("orgWarmupRatelimitStr", "2/hour"),
    ])
    .await?;
    let org = fx.env.org("a", json!({}), json!({}), None).await?;
    let run = fx.s2z(&["status", &org])?;
    run.code(0);
    assert!(
        run.stdout.contains("Warning: the orgWarmupRatelimitStr period (1h) is longer than the dormancy period (30m)"),
        "{run:#?}"
    );
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(
        report["settings"]["warnings"].as_array().map(Vec::len),
        Some(1)
    );
    fx.cleanup().await
}

#[tokio::test]
async fn status_watch_prints_again_when_an_org_changes() -> Result<()> {
    let mut fx = Fixture::new("plg-watch").await?;
    let org = fx.env.org("a", json!({}), json!({}), None).await?;
    let mut child = s2z_command(&fx.env.plane, &["-n", &fx.sys, "status", &org, "--watch"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let renders = |want: usize| -> Result<()> {
        let mut seen = 0;
        let deadline = std::time::Instant::now() + WAIT;
        while seen < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).context("watch printed too little")?;
            if line.starts_with("Dormancy period:") {
                seen += 1;
            }
        }
        Ok(())
    };
    let first = renders(1);
    let changed = async {
        first?;
        // A change to the org: disabling it makes it Exempt.
        fx.s2z(&["disable", &org])?.code(0);
        renders(1)
    }
    .await;
    child.kill().ok();
    child.wait().ok();
    changed?;
    fx.cleanup().await
}
