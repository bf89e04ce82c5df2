//! Parts of the status benchmark: what it adds to the dormancy bench's population (the settings,
//! fake GPU nodes for KWOK, running and pending revision pods, org statuses), the commands it
//! times, and the checks that both sides read the same objects.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use s2z_core::labels::{ORG_LABEL, REVISION_LABEL};
use s2z_core::org::Org;
use s2z_tests::env::create_or_keep as create;
use serde_json::{Value, json};

use crate::dormancy_support::{CONCURRENCY, org_name, org_namespace};

/// The install namespace `kubectl s2z` reads its settings from by default.
pub const SETTINGS_NAMESPACE: &str = "s2z-system";

/// The dormancy period of the bench's settings: orgs idle longer than this are Dormant.
const PERIOD_HOURS: i64 = 24;

/// What the bench puts on the plane besides orgs, namespaces and revisions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub orgs: usize,
    pub revisions_per_org: usize,
    pub nodes: usize,
    pub gpus_per_node: usize,
    /// Running revision pods; the first `nodes * gpus_per_node` hold one GPU each.
    pub running: usize,
    /// Revision pods that cannot be scheduled (Pending), one GPU each requested.
    pub pending: usize,
}

impl Shape {
    /// GPUs held by running pods.
    pub fn gpus_held(&self) -> usize {
        self.running.min(self.nodes * self.gpus_per_node)
    }
}

/// The install namespace and its settings ConfigMap.
pub async fn settings(client: &kube::Client) -> Result<()> {
    create(
        &Api::<Namespace>::all(client.clone()),
        &serde_json::from_value(json!({"metadata": {"name": SETTINGS_NAMESPACE}}))?,
    )
    .await?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "s2z-settings", "namespace": SETTINGS_NAMESPACE},
        "data": {
            "orgDormancyPeriodSecs": (PERIOD_HOURS * 3600).to_string(),
            "orgWarmupRatelimitStr": "2/hour",
            "ratelimitEnabled": "true",
            "sweepIntervalSecs": "3600",
        },
    }))?;
    create(&Api::namespaced(client.clone(), SETTINGS_NAMESPACE), &cm).await
}

fn node_name(k: usize) -> String {
    format!("bench-gpu-{k}")
}

/// Fake GPU nodes, managed by the plane's KWOK through its annotation (as `s2z-cluster up
/// --nodes` makes them), so that pods bound to them become Running.
pub async fn nodes(client: &kube::Client, shape: &Shape) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for k in 0..shape.nodes {
        let name = node_name(k);
        let capacity = json!({"cpu": "64", "memory": "512Gi", "pods": "110",
            "nvidia.com/gpu": shape.gpus_per_node.to_string()});
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux", "nvidia.com/gpu.present": "true"}},
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity,
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                    "kubeletVersion": "fake"}},
        }))?;
        create(&api, &node).await?;
    }
    Ok(())
}

/// A Knative revision pod shaped like the real ones (user container and queue-proxy, the
/// labels and environment Knative sets), so that both sides move realistic bytes.
fn revision_pod(ns: &str, revision: &str, name: &str, gpus: usize, placement: Value) -> Value {
    let service = revision.trim_end_matches("-00001");
    let uid = "5f0c5a3e-9f0b-4d51-8a8e-2d7b0c6f4e21";
    let mut user_resources = json!({"requests": {"cpu": "1", "memory": "4Gi"}});
    if gpus > 0 {
        user_resources["limits"] = json!({"nvidia.com/gpu": gpus.to_string()});
    }
    let queue_env: Vec<Value> = [
        ("SERVING_NAMESPACE", ns),
        ("SERVING_SERVICE", service),
        ("SERVING_CONFIGURATION", service),
        ("SERVING_REVISION", revision),
        ("QUEUE_SERVING_PORT", "8012"),
        ("QUEUE_SERVING_TLS_PORT", "8112"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("SERVING_LOGGING_LEVEL", "info"),
        ("SERVING_REQUEST_LOG_TEMPLATE", ""),
        ("SERVING_REQUEST_METRICS_BACKEND", "prometheus"),
        ("TRACING_CONFIG_BACKEND", "none"),
        ("TRACING_CONFIG_SAMPLE_RATE", "0.1"),
        ("USER_PORT", "8080"),
        ("SYSTEM_NAMESPACE", "knative-serving"),
        ("METRICS_DOMAIN", "knative.dev/internal/serving"),
        (
            "SERVING_READINESS_PROBE",
            r#"{"tcpSocket":{"port":8080,"host":"127.0.0.1"},"successThreshold":1}"#,
        ),
        ("ENABLE_PROFILING", "false"),
        ("SERVING_ENABLE_PROBE_REQUEST_LOG", "false"),
        ("METRICS_COLLECTOR_ADDRESS", ""),
        ("ENABLE_HTTP2_AUTO_DETECTION", "false"),
        ("ROOT_CA", ""),
    ]
    .iter()
    .map(|(k, v)| json!({"name": k, "value": v}))
    .collect();
    let mut spec = json!({
        "containers": [
            {"name": "user-container", "image": "example.invalid/app@sha256:3b1f0c9e5d2a7f4b8c6e1d0a9f8e7d6c5b4a39281706f5e4d3c2b1a098f7e6d5",
             "ports": [{"name": "user-port", "containerPort": 8080, "protocol": "TCP"}],
             "env": [{"name": "PORT", "value": "8080"}, {"name": "K_REVISION", "value": revision},
                     {"name": "K_CONFIGURATION", "value": service}, {"name": "K_SERVICE", "value": service}],
             "resources": user_resources,
             "terminationMessagePolicy": "FallbackToLogsOnError"},
            {"name": "queue-proxy", "image": "example.invalid/queue@sha256:9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d",
             "ports": [{"name": "http-queueadm", "containerPort": 8022}, {"name": "http-autometric", "containerPort": 9090},
                       {"name": "http-usermetric", "containerPort": 9091}, {"name": "queue-port", "containerPort": 8012}],
             "env": queue_env,
             "resources": {"requests": {"cpu": "25m"}},
             "readinessProbe": {"httpGet": {"path": "/", "port": 8012, "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}]}},
             "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                 "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}},
        ],
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": 300,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    });
    if let (Some(spec), Some(placement)) = (spec.as_object_mut(), placement.as_object()) {
        spec.extend(placement.clone());
    }
    json!({
        "metadata": {"name": name, "namespace": ns,
            "labels": {"app": revision, REVISION_LABEL: revision,
                "serving.knative.dev/revisionUID": uid,
                "serving.knative.dev/configuration": service,
                "serving.knative.dev/configurationGeneration": "1",
                "serving.knative.dev/configurationUID": uid,
                "serving.knative.dev/service": service,
                "serving.knative.dev/serviceUID": uid,
                "pod-template-hash": "7d9c8b6f5"},
            "annotations": {"autoscaling.knative.dev/min-scale": "1",
                "serving.knative.dev/creator": "admin"}},
        "spec": spec,
    })
}

/// Running pods bound to the fake nodes (KWOK marks them Running) and pending ones that no
/// node matches, spread over the orgs; waits until the running ones are Running.
pub async fn pods(client: &kube::Client, shape: &Shape) -> Result<Duration> {
    let started = Instant::now();
    let capacity = shape.nodes * shape.gpus_per_node;
    let running = (0..shape.running).map(|k| {
        let (node, gpus) = if k < capacity {
            (k / shape.gpus_per_node.max(1), 1)
        } else {
            (k % shape.nodes.max(1), 0)
        };
        let org = k * shape.orgs / shape.running.max(1);
        let revision = format!("r{}-00001", k % shape.revisions_per_org.max(1));
        let name = format!("{revision}-deployment-7d9c8b6f5-{k:05}");
        (
            org,
            revision,
            name,
            gpus,
            json!({"nodeName": node_name(node)}),
        )
    });
    let pending = (0..shape.pending).map(|k| {
        let org = k * shape.orgs / shape.pending.max(1);
        let revision = format!("r{}-00001", k % shape.revisions_per_org.max(1));
        let name = format!("{revision}-deployment-7d9c8b6f5-p{k:05}");
        (
            org,
            revision,
            name,
            1,
            json!({"nodeSelector": {"s2z.dev/bench-absent": "true"}}),
        )
    });
    let all: Vec<_> = running.chain(pending).collect();
    // Pods are refused until the namespace's default ServiceAccount exists, which the
    // controller-manager creates shortly after the namespace.
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let defaults = ListParams::default().fields("metadata.name=default");
    loop {
        let have = accounts.list_metadata(&defaults).await?.items.len();
        if have >= shape.orgs {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {have} of {} default ServiceAccounts after 5 minutes",
            shape.orgs
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stream::iter(all)
        .map(|(org, revision, name, gpus, placement)| {
            let ns = org_namespace(org);
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            async move {
                let pod: Pod =
                    serde_json::from_value(revision_pod(&ns, &revision, &name, gpus, placement))?;
                create(&api, &pod).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let api: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default()
        .labels(REVISION_LABEL)
        .fields("status.phase=Running");
    loop {
        let now_running = api.list_metadata(&lp).await?.items.len();
        if now_running >= shape.running {
            ensure!(
                now_running == shape.running,
                "{now_running} revision pods Running, expected {} (a reused plane with other pods?)",
                shape.running
            );
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "only {now_running} of {} pods Running after 15 minutes",
            shape.running
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Statuses as the controller would have written them: activity spread over two days, so
/// that about half the orgs are Dormant by the bench's 24 h period.
pub async fn org_statuses(client: &kube::Client, orgs: usize) -> Result<()> {
    let api: Api<Org> = Api::all(client.clone());
    let now = Utc::now();
    let stamp = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    stream::iter(0..orgs)
        .map(|i| {
            let api = api.clone();
            let last = now - TimeDelta::minutes(((i * 97) % (48 * 60)) as i64 + 1);
            let due = last + TimeDelta::hours(PERIOD_HOURS);
            let status = if due > now {
                json!({"lastActivityAt": stamp(last), "state": "Active", "stateSince": stamp(last),
                       "dormantAt": stamp(due)})
            } else {
                json!({"lastActivityAt": stamp(last), "state": "Dormant", "stateSince": stamp(due),
                       "dormantAt": null})
            };
            async move {
                api.patch_status(
                    &org_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// What one timed invocation cost.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    /// From the first spawn to the last exit.
    pub wall: Duration,
    /// CPU of the client processes (kubectl, and the plugin it runs).
    pub client_cpu: Duration,
    /// CPU of the API server and etcd meanwhile.
    pub server_cpu: Duration,
    /// Bytes written to stdout.
    pub bytes: usize,
}

/// Runs commands through the real kubectl with the bench's environment.
pub struct Runner {
    pub kubectl: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    /// Processes whose CPU counts as the server's (kube-apiserver, etcd).
    pub server_pids: Vec<u32>,
}

impl Runner {
    fn server_cpu(&self) -> Duration {
        self.server_pids
            .iter()
            .filter_map(|pid| cpu_time(*pid, false))
            .sum()
    }

    async fn one(&self, args: &[String]) -> Result<Vec<u8>> {
        let out = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("failed to run kubectl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// Runs `commands` (kubectl arguments), all at once or one after another; their stdouts
    /// in order, and what it cost.
    pub async fn run(
        &self,
        commands: &[Vec<String>],
        parallel: bool,
    ) -> Result<(Cost, Vec<Vec<u8>>)> {
        let me = std::process::id();
        let (client_before, server_before) = (cpu_time(me, true), self.server_cpu());
        let started = Instant::now();
        let outputs = if parallel {
            futures::future::try_join_all(commands.iter().map(|c| self.one(c))).await?
        } else {
            let mut outputs = Vec::new();
            for c in commands {
                outputs.push(self.one(c).await?);
            }
            outputs
        };
        let wall = started.elapsed();
        let client_cpu = cpu_time(me, true)
            .zip(client_before)
            .map(|(after, before)| after.saturating_sub(before))
            .unwrap_or_default();
        let cost = Cost {
            wall,
            client_cpu,
            server_cpu: self.server_cpu().saturating_sub(server_before),
            bytes: outputs.iter().map(Vec::len).sum(),
        };
        Ok((cost, outputs))
    }
}

/// The `kubectl get`s that fetch what `kubectl s2z status` reads: the same kinds with the same
/// selectors (see plugin/src/cluster.rs), as JSON.
pub fn kubectl_gets() -> Vec<Vec<String>> {
    let rows: [&[&str]; 5] = [
        &["get", "orgs.s2z.dev", "-o", "json"],
        &["get", "namespaces", "-l", ORG_LABEL, "-o", "json"],
        &["get", "revisions.serving.knative.dev", "-A", "-o", "json"],
        &[
            "get",
            "pods",
            "-A",
            "-l",
            REVISION_LABEL,
            "--field-selector",
            "status.phase=Running",
            "-o",
            "json",
        ],
        &[
            "get",
            "configmap",
            "s2z-settings",
            "-n",
            SETTINGS_NAMESPACE,
            "-o",
            "json",
        ],
    ];
    rows.iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// `kubectl s2z status -o json`.
pub fn s2z_status() -> Vec<Vec<String>> {
    vec![vec![
        "s2z".into(),
        "status".into(),
        "-o".into(),
        "json".into(),
    ]]
}

/// Checks the plugin's report against the population.
pub fn check_report(stdout: &[u8], shape: &Shape) -> Result<()> {
    let report: Value = serde_json::from_slice(stdout).context("status -o json is not JSON")?;
    let totals = &report["totals"];
    let orgs = report["orgs"].as_array().context("no orgs in the report")?;
    let sum = |kind: &str| -> u64 {
        orgs.iter()
            .map(|o| o[kind]["total"].as_u64().unwrap_or(0))
            .sum()
    };
    let got = (
        totals["orgs"].as_u64(),
        sum("pynodes") + sum("models"),
        sum("models"),
        totals["runningPods"].as_u64(),
        totals["gpus"].as_u64(),
    );
    let want = (
        Some(shape.orgs as u64),
        (shape.orgs * shape.revisions_per_org) as u64,
        shape.orgs as u64,
        Some(shape.running as u64),
        Some(shape.gpus_held() as u64),
    );
    ensure!(
        got == want,
        "status report (orgs, revisions, models, running pods, GPUs) = {got:?}, expected {want:?}"
    );
    Ok(())
}

/// Checks the `kubectl get` outputs against the population: the same objects the report counts.
pub fn check_gets(stdouts: &[Vec<u8>], shape: &Shape) -> Result<()> {
    let docs: Vec<Value> = stdouts
        .iter()
        .map(|s| serde_json::from_slice(s).context("kubectl -o json is not JSON"))
        .collect::<Result<_>>()?;
    let items = |i: usize| docs.get(i).and_then(|d| d["items"].as_array());
    let count = |i: usize| items(i).map_or(0, Vec::len);
    let gpus: u64 = items(3).map_or(0, |pods| {
        pods.iter()
            .flat_map(|p| {
                p["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| {
                c["resources"]["limits"]["nvidia.com/gpu"]
                    .as_str()
                    .and_then(|q| q.parse::<u64>().ok())
            })
            .sum()
    });
    let got = (
        count(0),
        count(1),
        count(2),
        count(3),
        gpus,
        docs.get(4).and_then(|d| d["kind"].as_str()),
    );
    let want = (
        shape.orgs,
        shape.orgs,
        shape.orgs * shape.revisions_per_org,
        shape.running,
        shape.gpus_held() as u64,
        Some("ConfigMap"),
    );
    ensure!(
        got == want,
        "kubectl get (orgs, namespaces, revisions, running pods, GPUs, settings) = {got:?}, expected {want:?}"
    );
    Ok(())
}

/// CPU time (user + system) of a process from /proc/<pid>/stat; with `children`, that of its
/// children already waited for instead.
pub fn cpu_time(pid: u32, children: bool) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field n of proc(5) (state is field 3) is at index n - 3 here.
    let (user, system) = if children { (16, 17) } else { (14, 15) };
    let ticks =
        fields.get(user - 3)?.parse::<u64>().ok()? + fields.get(system - 3)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}
