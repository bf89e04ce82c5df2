//! Clusters that cannot be used: unreachable, without s2z, RBAC refusals; and kubectl finding
//! the plugin.

use std::path::{Path, PathBuf};

use anyhow::Result;
use s2z_tests::{Plane, TestEnv, kubectl};
use serde_json::{Value, json};

use crate::support::{Fixture, Run, plugin_dir, run_with, s2z};

fn write_kubeconfig(dir: &Path, plane: &Plane, server: &str) -> Result<PathBuf> {
    let admin = std::fs::read_to_string(&plane.admin_kubeconfig)?;
    let mut doc: Value = serde_yaml::from_str(&admin)?;
    for cluster in doc["clusters"].as_array_mut().into_iter().flatten() {
        cluster["cluster"]["server"] = json!(server);
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
    Ok(path)
}

#[tokio::test]
async fn unusable_clusters_fail_with_exit_4() -> Result<()> {
    let env = TestEnv::new("plg-unreach").await?;
    let dir = tempfile::tempdir()?;
    // Nothing listens on port 1.
    let kubeconfig = write_kubeconfig(dir.path(), &env.plane, "https://127.0.0.1:1")?;
    let kc = kubeconfig.to_string_lossy().to_string();
    for args in [
        vec!["status"],
        vec!["enable", "acme"],
        vec!["settings"],
        vec!["sweep", "--dry-run"],
    ] {
        let mut full = vec!["--kubeconfig", kc.as_str()];
        full.extend(args);
        s2z(&env, &full)?.fails(4, "cannot reach the cluster at https://127.0.0.1:1");
    }
    s2z(&env, &["status", "--context", "no-such-context"])?.fails(4, "failed to load kubeconfig");
    s2z(&env, &["status", "--kubeconfig", "/no/such/kubeconfig"])?
        .fails(4, "failed to load kubeconfig");
    s2z(&env, &["status", "--request-timeout", "soon"])?
        .fails(2, "failed to read --request-timeout");
    // version stays useful: the client's version, and "unknown" for the cluster.
    let run = s2z(&env, &["--kubeconfig", &kc, "version"])?;
    run.code(0);
    assert!(
        run.stdout.contains(
            "Webhook Version: unknown (failed to get leases.coordination.k8s.io/s2z-controller"
        ),
        "{run:#?}"
    );
    // Usage errors do print usage, with clap's exit code 2.
    let run = s2z(&env, &["status", "--no-such-flag"])?;
    run.code(2);
    assert!(run.stderr.contains("Usage:"), "{run:#?}");
    Ok(())
}

#[tokio::test]
async fn a_cluster_without_s2z_fails_with_exit_5() -> Result<()> {
    let env = TestEnv::new("plg-nocrd").await?;
    // An API server that does not serve orgs.s2z.dev answers `404 page not found`. Other tests
    // install the CRD on the shared plane, so this test reaches the same answer from the same
    // API server by giving the plugin a base path the server does not serve.
    let dir = tempfile::tempdir()?;
    let kubeconfig = write_kubeconfig(
        dir.path(),
        &env.plane,
        &format!("{}/no-s2z-here", env.plane.server),
    )?;
    let kc = kubeconfig.to_string_lossy().to_string();
    for args in [
        vec!["status"],
        vec!["wake", "acme"],
        vec!["sweep", "--dry-run"],
    ] {
        let mut full = vec!["--kubeconfig", kc.as_str()];
        full.extend(args);
        s2z(&env, &full)?.fails(
            5,
            "failed to list orgs.s2z.dev: the orgs.s2z.dev CustomResourceDefinition is not installed on this cluster",
        );
    }
    Ok(())
}

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() -> Result<()> {
    let mut fx = Fixture::new("plg-rbac").await?;
    let org = fx.env.org("a", json!({}), json!({}), None).await?;
    let restricted = fx.env.plane.restricted_kubeconfig.clone();
    let as_restricted = |args: &[&str]| -> Result<Run> {
        let mut full = vec!["-n", fx.sys.as_str()];
        full.extend_from_slice(args);
        run_with(&fx.env.plane, Some(&restricted), &full)
    };
    // `view` does not cover orgs.s2z.dev: listing them is forbidden.
    let run = as_restricted(&["status", &org])?;
    run.fails(6, "failed to list orgs.s2z.dev: forbidden:");
    assert!(
        run.stderr.contains("cannot list resource \"orgs\""),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("kubectl auth can-i list orgs.s2z.dev"),
        "{run:#?}"
    );
    as_restricted(&["disable", &org])?.fails(6, "failed to list orgs.s2z.dev: forbidden:");
    assert!(
        fx.get_org(&org).await?.spec.scale_to_zero_allowed,
        "nothing written"
    );
    // `view` may read ConfigMaps but not write them.
    let run = as_restricted(&["settings", "set", "--dormancy-period", "2h"])?;
    run.fails(6, "failed to create configmaps in namespace");
    assert!(
        run.stderr.contains(&format!(
            "kubectl auth can-i create configmaps -n {}",
            fx.sys
        )),
        "{run:#?}"
    );
    assert_eq!(fx.settings_data().await?, None, "nothing written");
    fx.cleanup().await
}

#[tokio::test]
async fn kubectl_finds_the_plugin() -> Result<()> {
    let env = TestEnv::new("plg-list").await?;
    let dir = plugin_dir()?;
    let out = kubectl(&env.plane, &[&dir], &["plugin", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kubectl-s2z"), "{text}");
    let run = s2z(&env, &["--help"])?;
    run.code(0);
    assert!(
        run.stdout.contains("Usage: kubectl s2z") && run.stdout.contains("Exit codes:"),
        "{run:#?}"
    );
    Ok(())
}
