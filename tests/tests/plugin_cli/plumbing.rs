//! `version`, shell completions and output plumbing (a closed pipe).

use std::process::Stdio;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use s2z_tests::TestEnv;
use serde_json::json;

use crate::support::{Fixture, s2z, s2z_command};

#[tokio::test]
async fn version_shows_client_and_webhook() -> Result<()> {
    let fx = Fixture::new("plg-version").await?;
    let run = fx.s2z(&["version"])?;
    run.code(0);
    assert!(
        run.stdout
            .starts_with(&format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"))),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "Webhook Version: not installed (no lease/s2z-controller in {})",
            fx.sys
        )),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains(&format!("Kubernetes Version: {}", fx.env.plane.version)),
        "{run:#?}"
    );

    // The leader's Lease carries the webhook's version.
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "s2z-controller", "annotations": {"s2z.dev/version": "9.8.7"}},
        "spec": {"holderIdentity": "s2z-webhook-abc"},
    }))?;
    Api::<Lease>::namespaced(fx.env.client.clone(), &fx.sys)
        .create(&PostParams::default(), &lease)
        .await?;
    let run = fx.s2z(&["version"])?;
    run.code(0);
    assert!(
        run.stdout
            .contains("Webhook Version: 9.8.7 (leader s2z-webhook-abc)"),
        "{run:#?}"
    );
    let doc = fx.s2z(&["version", "-o", "json"])?.json()?;
    assert_eq!(doc["kind"], "VersionReport");
    assert_eq!(doc["webhook"]["version"], "9.8.7");
    assert_eq!(doc["webhook"]["status"], "installed");

    let run = fx.s2z(&["version", "--client"])?;
    run.code(0);
    assert_eq!(
        run.stdout,
        format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"))
    );
    fx.cleanup().await
}

#[tokio::test]
async fn completion_scripts() -> Result<()> {
    let env = TestEnv::new("plg-completion").await?;
    for shell in ["bash", "zsh", "fish"] {
        let run = s2z(&env, &["completion", shell])?;
        run.code(0);
        assert!(
            run.stdout.contains("kubectl-s2z") && run.stdout.contains("sweep"),
            "{shell}"
        );
    }
    let run = s2z(&env, &["completion", "powershell"])?;
    run.code(2);
    Ok(())
}

#[tokio::test]
async fn a_closed_pipe_exits_0() -> Result<()> {
    let env = TestEnv::new("plg-pipe").await?;
    let mut child = s2z_command(&env.plane, &["completion", "zsh"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Close our end before the plugin writes: its writes fail with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
