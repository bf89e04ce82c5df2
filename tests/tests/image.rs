//! The image `make image` builds, run for real: unpacked with umoci and started by runc with
//! the Deployment's own settings (user 65532, read-only root filesystem, every capability
//! dropped, the TLS Secret and the ServiceAccount token mounted read-only, the shipped RBAC),
//! and registered with the local plane's API server, which then calls the container's webhook:
//! a dormant org's new Revision is born at zero by it. The controller in the container is the
//! one that finds the org dormant.
//!
//! Needs `make image` first (`make test` does), root, and runc.

mod controller_support;

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use controller_support::{Fixture, WAIT, stamp};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use s2z_core::labels::{INITIAL_SCALE, MIN_SCALE, SLEEP_ANNOTATION};
use s2z_core::org::OrgState;
use s2z_tests::container::{self, Container, Mount, NONROOT, SA_DIR, Spec, TLS_DIR, proc_status};
use s2z_tests::tls::TestCert;
use s2z_tests::webhook::{delete_mwc, free_port, http_get, register_mwc};
use serde_json::json;

/// Writes `files` into `dir` as the kubelet writes a Secret volume with `defaultMode: 0440` and
/// `fsGroup: 65532`: readable by the group 65532, not by others.
fn secret_dir(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::write(&path, data)?;
        chown(&path, Some(0), Some(NONROOT))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test]
async fn the_image_runs_as_the_deployment_runs_it_and_mutates_a_dormant_orgs_revision() -> Result<()>
{
    let (layout, tag) = container::image()?;
    let mut fx = Fixture::new(
        "image",
        &[
            ("orgDormancyPeriodSecs", "3600"),
            ("sweepIntervalSecs", "3600"),
        ],
    )
    .await?;
    let token = fx.webhook_identity().await?;
    let dir = tempfile::tempdir()?;
    let cert = TestCert::localhost()?;
    let tls = dir.path().join("tls");
    secret_dir(
        &tls,
        &[
            ("tls.crt", cert.cert_pem.as_bytes()),
            ("tls.key", cert.key_pem.as_bytes()),
        ],
    )?;
    let sa = dir.path().join("serviceaccount");
    let ca = std::fs::read(&fx.env.plane.ca_file).context("failed to read the plane's CA")?;
    secret_dir(
        &sa,
        &[
            ("token", token.as_bytes()),
            ("ca.crt", &ca),
            ("namespace", fx.sys.as_bytes()),
        ],
    )?;
    // In a pod, KUBERNETES_SERVICE_HOST/PORT name the API server; here it is the plane's.
    let server = fx
        .env
        .plane
        .server
        .trim_start_matches("https://")
        .to_string();
    let (host, port) = server
        .rsplit_once(':')
        .with_context(|| format!("no port in the plane's server {server}"))?;
    let (tls_port, metrics_port) = (free_port()?, free_port()?);
    let mut args = vec![
        format!("--tls-addr=127.0.0.1:{tls_port}"),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        format!("--tls-cert-file={TLS_DIR}/tls.crt"),
        format!("--tls-key-file={TLS_DIR}/tls.key"),
        "--log-format=json".into(),
    ];
    args.extend(fx.args(&[]));
    let env = [
        format!("KUBERNETES_SERVICE_HOST={host}"),
        format!("KUBERNETES_SERVICE_PORT={port}"),
        format!("POD_NAME={}-webhook", fx.env.id),
    ];
    let bundle = container::bundle(
        &layout,
        &tag,
        dir.path(),
        &Spec {
            args: &args,
            env: &env,
            mounts: &[
                Mount {
                    source: &tls,
                    target: TLS_DIR,
                },
                Mount {
                    source: &sa,
                    target: SA_DIR,
                },
            ],
        },
    )?;

    let started = Instant::now();
    let mut webhook = Container::start(&fx.env.id, &bundle, &dir.path().join("webhook.log"))?;
    loop {
        if let Some(status) = webhook.exited()? {
            anyhow::bail!("the container exited with {status}:\n{}", webhook.logs());
        }
        if let Ok((200, _)) = http_get(metrics_port, "/readyz").await {
            break;
        }
        ensure!(
            started.elapsed() < WAIT,
            "the container's /readyz never answered 200:\n{}",
            webhook.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("container ready in {:?}", started.elapsed());

    // The process runs as the Deployment says: user 65532, no capabilities, no new privileges,
    // on a read-only root filesystem.
    let pid = webhook.pid()?;
    let uid = proc_status(pid, "Uid")?;
    ensure!(
        uid.split_whitespace().all(|u| u == NONROOT.to_string()),
        "Uid {uid}"
    );
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        let value = proc_status(pid, caps)?;
        ensure!(value.trim_start_matches('0').is_empty(), "{caps} {value}");
    }
    ensure!(proc_status(pid, "NoNewPrivs")? == "1", "NoNewPrivs");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .context("no root mount in the container's mountinfo")?;
    ensure!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "root filesystem not read-only: {root}"
    );

    // The plane's API server calls the container for this test's org namespaces.
    let mwc = fx.env.name("s2z-image");
    let selector = json!({"matchExpressions": [
        {"key": "s2z.dev/org", "operator": "Exists"},
        {"key": "s2z.dev/test", "operator": "In", "values": [fx.env.id]},
    ]});
    let url = format!("https://127.0.0.1:{tls_port}/mutate");
    register_mwc(&fx.env.client, &mwc, &url, &cert.ca_bundle(), selector).await?;

    // A dormant org (put to sleep as `kubectl s2z sleep` does), seen so by the container's
    // controller.
    let org = fx.env.name("acme");
    let ns = fx.org_namespace(&org, "acme").await?;
    fx.org("acme", json!({})).await?;
    let patch = json!({"metadata": {"annotations": {SLEEP_ANNOTATION: stamp(Utc::now())}}});
    fx.orgs_api()
        .patch(&org, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    fx.wait_state(&org, OrgState::Dormant, WAIT).await?;

    // The redeploy: the Revision the API server stores is the one the container's webhook
    // answered with. initial-scale is set only at admission; the controller never writes it.
    let revision: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "model-00002", "namespace": ns,
                     "labels": {"serving.knative.dev/configuration": "model"},
                     "annotations": {MIN_SCALE: "3"}},
        "spec": {"containers": [{"image": "example.invalid/model:2"}]},
    }))?;
    let stored = fx
        .revisions(&ns)
        .create(&PostParams::default(), &revision)
        .await
        .context("failed to create the revision")?;
    let annotations = stored.metadata.annotations.unwrap_or_default();
    ensure!(
        annotations.get(MIN_SCALE).map(String::as_str) == Some("0")
            && annotations.get(INITIAL_SCALE).map(String::as_str) == Some("0"),
        "not born at zero: {annotations:?}\ncontainer log:\n{}",
        webhook.logs()
    );

    // Graceful shutdown on SIGTERM within the Deployment's terminationGracePeriodSeconds.
    let status = webhook.terminate(Duration::from_secs(40)).await?;
    ensure!(status.success(), "exit {status}:\n{}", webhook.logs());
    delete_mwc(&fx.env.client, &mwc).await?;
    fx.cleanup().await
}
