//! Fake KWOK nodes private to one test: tainted and labelled with the test's id, so that nothing
//! else lands on them and cordoning one disturbs no other test.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::TestEnv;
use crate::env::eventually;

/// The GPU model the private nodes advertise (`nvidia.com/gpu.product`).
pub const GPU_PRODUCT: &str = "NVIDIA-H100-80GB-HBM3";

/// Creates one node per entry of `gpus` (its GPU count), named `<test id>-node<i>`, and waits
/// until KWOK reports each Ready. `cordoned[i]` creates node i unschedulable, which is how tests
/// steer where pods land.
pub async fn private_nodes(env: &TestEnv, gpus: &[u32], cordoned: &[bool]) -> Result<Vec<String>> {
    let nodes = Api::<Node>::all(env.client.clone());
    let mut names = Vec::new();
    for (i, gpu) in gpus.iter().enumerate() {
        let name = env.name(&format!("node{i}"));
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "s2z.dev/test": env.id, "kubernetes.io/hostname": name,
                           "nvidia.com/gpu.product": GPU_PRODUCT},
            },
            "spec": {
                "unschedulable": cordoned.get(i).copied().unwrap_or(false),
                "taints": [{"key": "s2z.dev/test", "value": env.id, "effect": "NoSchedule"}],
            },
            "status": {
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpu.to_string()},
                "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpu.to_string()},
            },
        }))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("failed to create node {name}"))?;
        names.push(name);
    }
    for name in &names {
        eventually(
            &format!("node {name} Ready"),
            Duration::from_secs(60),
            || async {
                let n = nodes.get(name).await?;
                let ready = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                Ok(ready.then_some(()))
            },
        )
        .await?;
    }
    Ok(names)
}

/// Deletes the test's nodes (best effort: cleanup must not hide the test's own result).
pub async fn delete_nodes(env: &TestEnv, names: &[String]) {
    let nodes = Api::<Node>::all(env.client.clone());
    for n in names {
        nodes.delete(n, &DeleteParams::default()).await.ok();
    }
}
