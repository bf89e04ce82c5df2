//! Smoke test of the local control plane: proves each piece is real (scheduler, KWOK kubelets,
//! ReplicaSet controller, admission webhooks called by the API server, RBAC, kubectl plugins).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use s2z_tests::env::eventually;
use s2z_tests::nodes::{delete_nodes, private_nodes};
use s2z_tests::{TestEnv, kubectl, plane::kubectl_as, tls::TestCert};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn deployment(env: &TestEnv, name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"s2z.dev/test": env.id},
                    "tolerations": [{"key": "s2z.dev/test", "operator": "Equal", "value": env.id, "effect": "NoSchedule"}],
                    "containers": [{"name": "model", "image": "example.invalid/model:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                },
            },
        },
    }))?)
}

fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

#[tokio::test]
async fn deployment_pods_run_on_fake_nodes_and_cordon_keeps_new_pods_off() -> Result<()> {
    let mut env = TestEnv::new("smoke-sched").await?;
    let ns = env.namespace("ns", &[]).await?;
    let nodes = private_nodes(&env, &[8, 8], &[]).await?;
    let pods = Api::<Pod>::namespaced(env.client.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(env.client.clone(), &ns);

    deploys
        .create(&PostParams::default(), &deployment(&env, "web", 2)?)
        .await?;
    let running = eventually("2 pods Running and Ready", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_ready).collect();
        Ok((ready.len() == 2).then_some(ready))
    })
    .await?;
    for p in &running {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            nodes.contains(&node),
            "pod scheduled onto {node}, not a private fake node"
        );
    }

    // Cordon the first node; every pod created afterwards must land on the second.
    let out = kubectl(&env.plane, &[], &["cordon", &nodes[0]])?;
    assert!(
        out.status.success(),
        "kubectl cordon failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await?;
    let all = eventually("6 pods Ready", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_ready).collect();
        Ok((ready.len() == 6).then_some(ready))
    })
    .await?;
    let old: Vec<_> = running
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    for p in all
        .iter()
        .filter(|p| !old.contains(p.metadata.uid.as_ref().unwrap_or(&String::new())))
    {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert_eq!(node, nodes[1], "a new pod landed on the cordoned node");
    }

    delete_nodes(&env, &nodes).await;
    env.cleanup().await
}

#[tokio::test]
async fn removing_pod_template_hash_makes_the_replicaset_replace_the_pod() -> Result<()> {
    let mut env = TestEnv::new("smoke-orphan").await?;
    let ns = env.namespace("ns", &[]).await?;
    let nodes = private_nodes(&env, &[8], &[]).await?;
    let pods = Api::<Pod>::namespaced(env.client.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(env.client.clone(), &ns);
    deploys
        .create(&PostParams::default(), &deployment(&env, "m", 1)?)
        .await?;
    let first = eventually("1 pod Ready", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=m")).await?;
        Ok(list.items.into_iter().find(pod_ready))
    })
    .await?;
    let name = first.metadata.name.clone().context("pod has no name")?;

    // JSON patch "remove" fails if the label is gone, so it proves the label was there.
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::<()>::Json(json_patch::Patch(vec![json_patch::PatchOperation::Remove(
            json_patch::RemoveOperation {
                path: jsonptr::PointerBuf::parse("/metadata/labels/pod-template-hash")?,
            },
        )])),
    )
    .await?;

    let replacement = eventually("a replacement pod Ready", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=m")).await?;
        Ok(list
            .items
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(&name) && pod_ready(p)))
    })
    .await?;
    assert!(
        replacement
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("pod-template-hash")
    );
    let orphan = eventually("the ReplicaSet to release the pod", WAIT, || async {
        let p = pods.get(&name).await?;
        Ok(p.metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty())
            .then_some(p))
    })
    .await?;
    assert!(pod_ready(&orphan), "the orphan must keep running");
    let rs = Api::<ReplicaSet>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    assert_eq!(rs.items.len(), 1);
    assert_eq!(rs.items[0].status.as_ref().map(|s| s.replicas), Some(1));

    delete_nodes(&env, &nodes).await;
    env.cleanup().await
}

/// A tiny mutating webhook: it adds the label `s2z-smoke: mutated` to every object it sees.
async fn serve_webhook(cert: &TestCert) -> Result<(u16, Arc<std::sync::atomic::AtomicU32>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let uid = review["request"]["uid"].clone();
                            let patch = json!([{"op": "add", "path": "/metadata/labels", "value": {"s2z-smoke": "mutated"}}]);
                            let resp = json!({
                                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch",
                                    "patch": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, patch.to_string())},
                            });
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                resp.to_string(),
                            ))))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(io, svc)
                .await;
            });
        }
    });
    Ok((port, calls))
}

#[tokio::test]
async fn api_server_calls_a_url_webhook_and_stores_its_patch() -> Result<()> {
    let mut env = TestEnv::new("smoke-webhook").await?;
    let ns = env
        .namespace("ns", &[("s2z-smoke", &env.id.clone())])
        .await?;
    let cert = TestCert::localhost()?;
    let (port, calls) = serve_webhook(&cert).await?;
    let name = env.name("wh");
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "smoke.s2z.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": cert.ca_bundle()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"s2z-smoke": env.id}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))?;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(env.client.clone());
    mwcs.create(&PostParams::default(), &mwc).await?;

    // The apiserver's webhook cache is refreshed by a watch: retry until the patch shows up.
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), &ns);
    let mut i = 0;
    let stored = eventually("the webhook's patch in the stored object", WAIT, || {
        i += 1;
        let cms = cms.clone();
        async move {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("cm{i}")}}))?;
            cms.create(&PostParams::default(), &cm).await?;
            let got = cms.get(&format!("cm{i}")).await?;
            Ok(got
                .metadata
                .labels
                .unwrap_or_default()
                .get("s2z-smoke")
                .cloned())
        }
    })
    .await?;
    assert_eq!(stored, "mutated");
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "webhook server was never called"
    );

    mwcs.delete(&name, &DeleteParams::default()).await?;
    env.cleanup().await
}

#[tokio::test]
async fn restricted_identity_is_refused_what_rbac_refuses() -> Result<()> {
    let env = TestEnv::new("smoke-rbac").await?;
    let restricted = s2z_tests::plane::client_for(&env.plane.restricted_kubeconfig).await?;
    // Reading is granted (view)...
    Api::<Pod>::namespaced(restricted.clone(), "default")
        .list(&ListParams::default())
        .await?;
    // ...writing is not.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": env.name("nope")}}))?;
    match Api::<Namespace>::all(restricted)
        .create(&PostParams::default(), &ns)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "expected Forbidden, got {s:?}"),
        Err(other) => panic!("expected a 403 from RBAC, got {other}"),
        Ok(_) => panic!("the restricted identity created a namespace"),
    }
    // And the real kubectl says so too.
    let out = kubectl_as(
        &env.plane,
        &env.plane.restricted_kubeconfig,
        &[],
        &["auth", "can-i", "delete", "nodes"],
    )?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    Ok(())
}

#[tokio::test]
async fn kubectl_runs_a_plugin_found_on_path() -> Result<()> {
    let env = TestEnv::new("smoke-plugin").await?;
    let dir = tempfile::tempdir()?;
    let plugin = format!("smoke{}", std::process::id());
    let path = dir.path().join(format!("kubectl-{plugin}"));
    std::fs::write(&path, "#!/bin/sh\necho \"plugin says: $*\"\n")?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = kubectl(&env.plane, &[dir.path()], &[&plugin, "hello", "world"])?;
    assert!(
        out.status.success(),
        "kubectl {plugin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "plugin says: hello world"
    );
    let list = kubectl(&env.plane, &[dir.path()], &["plugin", "list"])?;
    assert!(String::from_utf8_lossy(&list.stdout).contains(&format!("kubectl-{plugin}")));
    Ok(())
}

#[tokio::test]
async fn api_server_reports_the_pinned_version() -> Result<()> {
    let env = TestEnv::new("smoke-version").await?;
    let info = env.client.apiserver_version().await?;
    assert_eq!(
        format!("v{}.{}", info.major, info.minor.trim_end_matches('+')),
        env.plane
            .version
            .rsplit_once('.')
            .map(|(minor, _patch)| minor)
            .unwrap_or_default()
    );
    assert_eq!(info.git_version, env.plane.version);
    Ok(())
}
