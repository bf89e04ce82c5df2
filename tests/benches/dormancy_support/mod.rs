//! Parts of the dormancy benchmark: a private control plane, bulk creation of orgs, namespaces
//! and revisions, an independent count of API writes (from watches, not from s2z's own
//! metrics), and an HTTP/2 client for the activity endpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use s2z_core::org::Org;
use s2z_tests::Plane;
use s2z_tests::env::create_or_keep as create;
use s2z_tests::plane::repo_root;
use serde_json::json;

/// How many API calls the setup makes at once.
pub const CONCURRENCY: usize = 48;

/// A control plane of the benchmark's own, stopped on drop (never the shared one).
pub struct PrivatePlane {
    pub plane: Plane,
    dir: PathBuf,
    owned: bool,
}

impl PrivatePlane {
    /// The bench's plane: reused (and kept) under `state_dir` when given, otherwise started in a
    /// temporary directory that lives as long as the returned guard, and stopped on drop. Bind the
    /// guard first (`let (_temp, plane) = ...`) so that the plane is stopped before it is removed.
    pub fn for_bench(state_dir: Option<&Path>) -> Result<(tempfile::TempDir, Self)> {
        let temp = tempfile::tempdir()?;
        let (dir, owned) = match state_dir {
            Some(dir) => (dir.to_path_buf(), false),
            None => (temp.path().join("plane"), true),
        };
        eprintln!("starting a private control plane under {}", dir.display());
        let plane = Self::up(&dir, owned)?;
        Ok((temp, plane))
    }

    /// The plane's state dir.
    #[allow(dead_code, reason = "the status bench reads it; this module is shared")]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a plane with no nodes under `dir`, or reuses a plane already running there.
    pub fn up(dir: &Path, owned: bool) -> Result<Self> {
        let launcher = repo_root().join("tests/cluster/bin/s2z-cluster");
        let status = Command::new(&launcher)
            .args(["up", "--nodes", "0", "--state-dir"])
            .arg(dir)
            .status()
            .with_context(|| format!("failed to run {}", launcher.display()))?;
        ensure!(status.success(), "s2z-cluster up failed");
        let raw = std::fs::read(dir.join("cluster.json"))?;
        let plane: Plane = serde_json::from_slice(&raw)?;
        Ok(Self {
            plane,
            dir: dir.to_path_buf(),
            owned,
        })
    }
}

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        if self.owned {
            let launcher = repo_root().join("tests/cluster/bin/s2z-cluster");
            let _ = Command::new(launcher)
                .args(["down", "--state-dir"])
                .arg(&self.dir)
                .status();
        }
    }
}

pub fn org_name(i: usize) -> String {
    format!("bench-o{i}")
}

pub fn org_namespace(i: usize) -> String {
    format!("bench-o{i}-ns")
}

/// Creates `orgs` orgs with one namespace each and `per_org` revisions per namespace (the
/// first one a model declaring min-scale 2). Returns how long it took.
pub async fn populate(
    client: &kube::Client,
    run: &str,
    orgs: usize,
    per_org: usize,
) -> Result<std::time::Duration> {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    stream::iter(0..orgs)
        .map(|i| {
            let namespaces = namespaces.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": org_namespace(i),
                        "labels": {"s2z.dev/org": org_name(i), "s2z.dev/bench": run}},
                }))?;
                create(&namespaces, &ns).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let resource = super_revisions();
    stream::iter((0..orgs).flat_map(|i| (0..per_org).map(move |j| (i, j))))
        .map(|(i, j)| {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &org_namespace(i), &resource);
            async move {
                let mut meta =
                    json!({"name": format!("r{j}-00001"), "labels": {}, "annotations": {}});
                if j == 0 {
                    meta["labels"]["serving.kserve.io/inferenceservice"] = json!("model");
                    meta["annotations"]["autoscaling.knative.dev/min-scale"] = json!("2");
                }
                let rev: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                    "metadata": meta,
                    "spec": {"containers": [{"image": "example.invalid/app:1"}]},
                }))?;
                create(&api, &rev).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let org_api: Api<Org> = Api::all(client.clone());
    stream::iter(0..orgs)
        .map(|i| {
            let org_api = org_api.clone();
            async move {
                let org: Org = serde_json::from_value(json!({
                    "apiVersion": "s2z.dev/v1alpha1", "kind": "Org",
                    "metadata": {"name": org_name(i), "labels": {"s2z.dev/bench": run}},
                    "spec": {},
                }))?;
                create(&org_api, &org).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

pub fn super_revisions() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// Counts writes to orgs and revisions as the API server reports them (watch MODIFIED events),
/// and tracks each revision's min-scale with the time it last changed.
#[derive(Default)]
pub struct Writes {
    pub orgs: AtomicU64,
    pub revisions: AtomicU64,
    /// (namespace/name) → (min-scale, when seen).
    pub min_scale: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.orgs.load(Ordering::Relaxed) + self.revisions.load(Ordering::Relaxed)
    }

    /// Revisions whose min-scale is `value`, and the latest time one of them changed.
    pub fn with_min_scale(&self, value: &str) -> (usize, Option<Instant>) {
        let map = self.min_scale.lock().unwrap_or_else(|e| e.into_inner());
        let hits: Vec<Instant> = map
            .values()
            .filter(|(v, _)| v.as_deref() == Some(value))
            .map(|(_, at)| *at)
            .collect();
        (hits.len(), hits.into_iter().max())
    }
}

/// Starts the watches feeding `Writes`; abort the handles before the plane goes away.
pub fn watch_writes(
    client: &kube::Client,
    run: &str,
) -> (Arc<Writes>, Vec<tokio::task::JoinHandle<()>>) {
    let writes = Arc::new(Writes::default());
    let orgs: Api<Org> = Api::all(client.clone());
    let sink = writes.clone();
    let config = watcher::Config::default().labels(&format!("s2z.dev/bench={run}"));
    let org_watch = tokio::spawn(async move {
        let mut events = watcher::watcher(orgs, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(_)) = event {
                sink.orgs.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let revisions: Api<PartialObjectMeta<DynamicObject>> =
        Api::all_with(client.clone(), &super_revisions());
    let sink = writes.clone();
    let revision_watch = tokio::spawn(async move {
        let mut events = watcher::watcher(revisions, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let (obj, counted) = match event {
                Ok(watcher::Event::Apply(obj)) => (obj, true),
                Ok(watcher::Event::InitApply(obj)) => (obj, false),
                _ => continue,
            };
            if counted {
                sink.revisions.fetch_add(1, Ordering::Relaxed);
            }
            let key = format!(
                "{}/{}",
                obj.metadata.namespace.clone().unwrap_or_default(),
                obj.metadata.name.clone().unwrap_or_default()
            );
            let value = obj
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("autoscaling.knative.dev/min-scale"))
                .cloned();
            let mut map = sink.min_scale.lock().unwrap_or_else(|e| e.into_inner());
            let changed = map.get(&key).map(|(v, _)| v != &value).unwrap_or(true);
            if changed {
                map.insert(key, (value, Instant::now()));
            }
        }
    });
    (writes, vec![org_watch, revision_watch])
}

/// HTTP/2 connections to the activity endpoint.
pub struct ActivityClient {
    senders: Vec<SendRequest<Full<Bytes>>>,
    port: u16,
    token: String,
}

impl ActivityClient {
    pub async fn connect(ca_pem: &str, port: u16, token: &str, connections: usize) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut senders = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(ServerName::try_from("127.0.0.1")?, tcp)
                .await?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await?;
            tokio::spawn(connection);
            senders.push(sender);
        }
        if senders.is_empty() {
            bail!("no connection");
        }
        Ok(Self {
            senders,
            port,
            token: token.to_string(),
        })
    }

    /// Sends one signal on connection `k % n`; the status code and body.
    pub async fn signal(&self, k: usize, org: &str) -> Result<(u16, Bytes)> {
        let mut sender = self.senders[k % self.senders.len()].clone();
        let request = hyper::Request::post(format!(
            "https://127.0.0.1:{}/v1/orgs/{org}/activity",
            self.port
        ))
        .header("authorization", format!("Bearer {}", self.token))
        .body(Full::new(Bytes::new()))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Resident and peak memory of a process, from /proc.
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
