//! Benchmark of `POST /mutate` over TLS with keep-alive, against the production server
//! (`server::serve_tls` + `server::tls_router`, the real cert reloader and the real watch stores)
//! filled with 10,000 orgs and their namespaces instead of a cluster.
//!
//! - Baseline: `POST /noop` of the same server, in the same run: a webhook that reads the same
//!   AdmissionReview bytes and answers without looking at them. `GET /noop` (no body) is
//!   reported too, as the floor of TLS + HTTP.
//! - Open loop: requests are put on a fixed timetable (500, 2,000, 5,000 req/s) by a thread of
//!   their own and latency is measured from the *scheduled* send time, so a slow response
//!   delays no measurement (no coordinated omission).
//! - Closed loop: 16 keep-alive connections send back to back; the maximum req/s, in rounds
//!   (every endpoint in turn, 3 times), medians reported.
//! - Calibration: `POST /bench/busy/{5,10}` (bench-only) read the same reviews and spin 5 or
//!   10 µs before answering: what any handler that spends that much CPU costs in this harness,
//!   where the load generator shares the server's 2 cores.
//! - Resident memory (VmRSS) before and after the caches hold 10,000 orgs.
//!
//! Run: `make bench-webhook` (`cargo bench -p s2z-webhook --bench mutate -- [--duration 5]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::body::{Body, Bytes};
use clap::Parser;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::PartialObjectMeta;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use s2z_core::org::Org;
use s2z_webhook::cache::{CacheScope, Caches};
use s2z_webhook::metrics::AdmissionMetrics;
use s2z_webhook::state::AppState;
use s2z_webhook::tls::CertReloader;
use s2z_webhook::{server, state::SharedState};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// The s2z webhook benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Orgs (one namespace each) in the caches.
    #[arg(long, default_value_t = 10_000)]
    orgs: usize,
    /// Open-loop offered rates, req/s.
    #[arg(long, value_delimiter = ',', default_values_t = [500, 2000, 5000])]
    rates: Vec<u32>,
    /// Keep-alive connections of the open-loop runs (more than ever busy at once).
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    /// Keep-alive connections of the closed-loop run.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Worker threads of the server's runtime (the production default is one per core).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Log admissions as production does (JSON, level info: patched or warned admissions are
    /// logged, the others are at debug), into a sink; `false` to measure without logging.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log: bool,
    /// Only run `admission::review` in a loop for this many seconds, then exit: a target for
    /// `perf record`.
    #[arg(long, hide = true)]
    profile_review: Option<u64>,
    /// Closed-loop rounds: every endpoint in turn, this many times; medians are reported, so
    /// that a burst of other load on the machine skews one round, not the result.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calibration: closed-loop runs of a bench-only endpoint that reads the review and spins
    /// this many µs before answering, to show what any handler's CPU time costs in this harness.
    #[arg(long, value_delimiter = ',', default_values_t = [5, 10])]
    busy: Vec<u64>,
    /// Only measure endpoints whose name contains one of these (`GET`, `POST /noop`, `mutate`,
    /// `busy`), e.g. under `perf record`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.log {
        // Production logs every admission at info; measure that cost, not the terminal's.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .init();
    }
    let load_start = load_average();
    let rss_start = vm_rss_kib()?;
    let started = Instant::now();
    let caches = fill_caches(args.orgs)?;
    let fill_time = started.elapsed();
    let rss_filled = vm_rss_kib()?;
    if let Some(secs) = args.profile_review {
        let requests = mutate_requests(args.orgs);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0usize;
        while Instant::now() < deadline {
            review_cost(&caches, &requests)?;
            n += 1;
        }
        println!("{n} rounds of {} reviews", requests.len());
        return Ok(());
    }
    let review_cost = review_cost(&caches, &mutate_requests(args.orgs))?;

    let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
    let (cert_pem, tls) = serving_cert(dir.path())?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("server")
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let addr = server_rt.block_on(start_server(caches, tls, shutdown.clone()))?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let report = client_rt.block_on(run(&args, addr, &cert_pem))?;
    let rss_after = vm_rss_kib()?;
    let load_end = load_average();
    shutdown.cancel();
    drop(server_rt);

    print_report(
        &args,
        &report,
        Memory {
            start: rss_start,
            filled: rss_filled,
            after: rss_after,
            fill_time,
        },
        review_cost,
    );
    println!("load average (1 min) of the machine: {load_start} before, {load_end} after");
    Ok(())
}

/// The 1-minute load average, from /proc/loadavg: how much else ran on the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The CPU time of the admission decision alone, `admission::review` on one thread without
/// HTTP or TLS: what /mutate costs on top of /noop, at most. Counted in this thread's CPU
/// time, so that time the machine gave to other processes does not count.
fn review_cost(caches: &Caches, requests: &[Req]) -> Result<Duration> {
    let now = chrono::Utc::now();
    let rounds = 20;
    for req in requests {
        s2z_webhook::admission::review(&req.body, caches, now)?;
    }
    let started = thread_cpu()?;
    for _ in 0..rounds {
        for req in requests {
            std::hint::black_box(s2z_webhook::admission::review(&req.body, caches, now)?);
        }
    }
    let used = thread_cpu()?.saturating_sub(started);
    Ok(used / u32::try_from(rounds * requests.len()).unwrap_or(u32::MAX))
}

/// CPU time of the calling thread so far (/proc/thread-self/schedstat, first field).
fn thread_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("failed to read /proc/thread-self/schedstat")?;
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .context("failed to parse /proc/thread-self/schedstat")?;
    Ok(Duration::from_nanos(nanos))
}

/// Resident memory of this process, from /proc/self/status.
fn vm_rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("failed to find VmRSS in /proc/self/status")
}

// ---------------------------------------------------------------------------------------------
// The caches, as the watches would fill them.

/// The state of org `i`: a third dormant, a third active, a third exempt.
fn org_kind(i: usize) -> &'static str {
    ["dormant", "active", "exempt"][i % 3]
}

fn org_name(i: usize) -> String {
    format!("org-{i:05}")
}

fn namespace_name(i: usize) -> String {
    format!("org-{i:05}-apps")
}

/// Orgs as the API server returns them to a watch: metadata with managedFields (the plugin's
/// apply and the controller's status writes), a full status with conditions.
fn org(i: usize) -> Result<Org> {
    let name = org_name(i);
    let (allowed, last_activity, state) = match org_kind(i) {
        "dormant" => (true, "2025-01-01T00:00:00Z", "Dormant"),
        "active" => (true, "2099-01-01T00:00:00Z", "Active"),
        _ => (false, "2025-01-01T00:00:00Z", "Exempt"),
    };
    let value = json!({
        "apiVersion": "s2z.dev/v1alpha1",
        "kind": "Org",
        "metadata": {
            "name": name,
            "uid": format!("6f1c2d3e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "generation": 2,
            "creationTimestamp": "2024-06-01T10:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "platform", "tier": "standard"},
            "managedFields": [
                {
                    "manager": "kubectl-s2z", "operation": "Apply", "apiVersion": "s2z.dev/v1alpha1",
                    "time": "2024-06-01T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:tier": {}}},
                                 "f:spec": {"f:scaleToZeroAllowed": {}, "f:scaleDownWindow": {}}},
                },
                {
                    "manager": "s2z-controller", "operation": "Update", "apiVersion": "s2z.dev/v1alpha1",
                    "time": "2025-05-30T12:00:00Z", "fieldsType": "FieldsV1", "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:lastActivityAt": {}, "f:models": {"f:scaledToZero": {}, "f:total": {}},
                                 "f:observedGeneration": {}, "f:pynodes": {"f:scaledToZero": {}, "f:total": {}}, "f:state": {}, "f:stateSince": {}}},
                },
            ],
        },
        "spec": {"scaleToZeroAllowed": allowed, "scaleDownWindow": "10m"},
        "status": {
            "lastActivityAt": last_activity,
            "state": state,
            "stateSince": "2025-01-02T00:00:00Z",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Evaluated", "message": "",
                 "lastTransitionTime": "2025-01-02T00:00:00Z", "observedGeneration": 2},
                {"type": "Dormant", "status": if state == "Dormant" { "True" } else { "False" }, "reason": state,
                 "message": format!("org is {state}"), "lastTransitionTime": "2025-01-02T00:00:00Z", "observedGeneration": 2},
            ],
            "pynodes": {"total": 4, "scaledToZero": 4},
            "models": {"total": 1, "scaledToZero": 1},
            "observedGeneration": 2,
        },
    });
    serde_json::from_value(value).with_context(|| format!("failed to build org {i}"))
}

/// A namespace as the metadata-only watch delivers and stores it.
fn namespace(i: usize) -> Result<PartialObjectMeta<Namespace>> {
    let name = namespace_name(i);
    serde_json::from_value(json!({
      "apiVersion": "meta.k8s.io/v1",
      "kind": "PartialObjectMetadata",
      "metadata": {
        "name": name,
        "uid": format!("0a1b2c3d-0000-4000-8000-{i:012}"),
        "resourceVersion": format!("{}", 200_000 + i),
        "creationTimestamp": "2024-06-01T10:00:00Z",
        "labels": {"kubernetes.io/metadata.name": name, "s2z.dev/org": org_name(i)},
        "managedFields": [{
            "manager": "platform-provisioner", "operation": "Update", "apiVersion": "v1",
            "time": "2024-06-01T10:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernetes.io/metadata.name": {}, "f:s2z.dev/org": {}}}},
        }],
      },
    }))
    .with_context(|| format!("failed to build namespace {i}"))
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Fills the caches one object at a time, as a watch does: no list of 10,000 objects is held
/// besides the stores, so the resident memory measured is theirs. `Caches::preloaded` slims
/// each object (no managedFields) as the production watches do.
fn fill_caches(orgs: usize) -> Result<Arc<Caches>> {
    // Surface a malformed object with its error; the streams below stop at the first one.
    org(0)?;
    namespace(0)?;
    let caches = Caches::preloaded(
        CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        },
        (0..orgs).map_while(|i| org(i).ok()),
        (0..orgs).map_while(|i| namespace(i).ok()),
        [
            configmap(
                "s2z-settings",
                &[
                    ("orgDormancyPeriodSecs", "86400"),
                    ("orgWarmupRatelimitStr", "2/hour"),
                ],
            ),
            configmap(
                "config-autoscaler",
                &[
                    ("allow-zero-initial-scale", "true"),
                    ("enable-scale-to-zero", "true"),
                ],
            ),
        ],
    );
    let (orgs_cached, namespaces_cached) = (
        caches.orgs().state().len(),
        caches.namespaces().state().len(),
    );
    ensure!(
        orgs_cached == orgs && namespaces_cached == orgs,
        "failed to fill the caches: {orgs_cached} orgs and {namespaces_cached} namespaces of {orgs}"
    );
    Ok(caches)
}

// ---------------------------------------------------------------------------------------------
// The server.

/// A client whose every call fails: the admission path makes none.
fn offline_client() -> kube::Client {
    let service = tower::service_fn(|_request: axum::http::Request<kube::client::Body>| async {
        Err::<axum::http::Response<Body>, _>(std::io::Error::other("no API server in the bench"))
    });
    kube::Client::new(service, "default")
}

/// Writes a fresh self-signed cert for localhost and loads it through the production reloader.
fn serving_cert(dir: &std::path::Path) -> Result<(String, Arc<rustls::ServerConfig>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .context("failed to generate a certificate")?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    let reloader = Arc::new(CertReloader::load(&cert, &key)?);
    Ok((ck.cert.pem(), reloader.server_config()?))
}

async fn start_server(
    caches: Arc<Caches>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let mut registry = Registry::with_prefix("s2z_webhook");
    let metrics = AdmissionMetrics::register(&mut registry);
    let state: SharedState = AppState::new(offline_client(), caches, metrics, registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Bench-only calibration: the same review read, then `us` µs of busy work, then an answer.
    let router = server::tls_router(state).merge(axum::Router::new().route(
        "/bench/busy/{us}",
        axum::routing::post(
            |axum::extract::Path(us): axum::extract::Path<u64>, body: Bytes| async move {
                let until = Instant::now() + Duration::from_micros(us);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                std::hint::black_box(body);
                r#"{"ok":true}"#
            },
        ),
    ));
    tokio::spawn(server::serve_tls(
        listener,
        tls,
        router,
        shutdown,
        Duration::from_secs(1),
    ));
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// The load.

/// One request, pre-built so the load generator spends its time sending.
#[derive(Clone)]
struct Req {
    method: axum::http::Method,
    path: &'static str,
    body: Bytes,
}

impl Req {
    fn build(&self) -> Result<axum::http::Request<Body>> {
        Ok(axum::http::Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(self.body.clone()))?)
    }
}

/// 512 AdmissionReviews of Revision CREATEs spread over the orgs (dormant, active and exempt;
/// one in four a model), each the size of a real Knative revision.
fn mutate_requests(orgs: usize) -> Vec<Req> {
    (0..512)
        .map(|n| {
            let i = (n * 7919) % orgs.max(1);
            let model = n % 4 == 0;
            let review = review(i, n, model);
            Req {
                method: axum::http::Method::POST,
                path: "/mutate",
                body: Bytes::from(review.to_string()),
            }
        })
        .collect()
}

fn review(i: usize, n: usize, model: bool) -> Value {
    let namespace = namespace_name(i);
    let service = if model {
        "bert-predictor".to_owned()
    } else {
        format!("app-{n}")
    };
    let mut labels = json!({
        "serving.knative.dev/configuration": service,
        "serving.knative.dev/configurationGeneration": "2",
        "serving.knative.dev/configurationUID": "1d4c7a52-8f0e-4c1b-9a57-0b3c2d1e4f5a",
        "serving.knative.dev/routingState": "pending",
        "serving.knative.dev/service": service,
        "serving.knative.dev/serviceUID": "a8e2f1c0-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "app.kubernetes.io/part-of": "platform",
    });
    let mut annotations = json!({
        "serving.knative.dev/creator": "system:serviceaccount:platform:deployer",
        "serving.knative.dev/routingStateModified": "2025-06-01T12:00:00Z",
        "autoscaling.knative.dev/target": "10",
        "autoscaling.knative.dev/max-scale": "5",
    });
    if model {
        labels["serving.kserve.io/inferenceservice"] = json!("bert");
        labels["component"] = json!("predictor");
        annotations["autoscaling.knative.dev/min-scale"] = json!("3");
        annotations["autoscaling.knative.dev/max-scale"] = json!("6");
    }
    let env: Vec<Value> = (0..8)
        .map(|k| json!({"name": format!("SETTING_{k}"), "value": format!("value-{k}-{n}")}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("705ab4f5-6393-11e8-b7cc-{n:012}"),
            "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Revision"},
            "resource": {"group": "serving.knative.dev", "version": "v1", "resource": "revisions"},
            "requestKind": {"group": "serving.knative.dev", "version": "v1", "kind": "Revision"},
            "requestResource": {"group": "serving.knative.dev", "version": "v1", "resource": "revisions"},
            "name": format!("{service}-00002"),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:knative-serving:controller",
                "uid": "3c5e7f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:knative-serving", "system:authenticated"],
            },
            "object": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {
                    "name": format!("{service}-00002"),
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [{
                        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration", "name": service,
                        "uid": "1d4c7a52-8f0e-4c1b-9a57-0b3c2d1e4f5a", "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "spec": {
                    "containerConcurrency": 0,
                    "timeoutSeconds": 300,
                    "serviceAccountName": "default",
                    "enableServiceLinks": false,
                    "containers": [{
                        "name": "user-container",
                        "image": "registry.example.com/platform/app@sha256:4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "env": env,
                        "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "250m", "memory": "512Mi"}},
                        "readinessProbe": {"successThreshold": 1, "tcpSocket": {"port": 0}},
                    }],
                },
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// The /mutate bodies POSTed to `path`: `/noop`, the baseline, a webhook that reads the review
/// and answers without looking at it, or a calibration endpoint.
fn same_bodies(mutate: &[Req], path: &'static str) -> Vec<Req> {
    mutate
        .iter()
        .map(|req| Req {
            path,
            ..req.clone()
        })
        .collect()
}

/// `GET /noop`: no body at all, the floor of TLS + HTTP on this machine.
fn bodiless_noop() -> Vec<Req> {
    vec![Req {
        method: axum::http::Method::GET,
        path: "/noop",
        body: Bytes::new(),
    }]
}

/// Connections to the server: TCP, TLS (trusting the test cert) and an HTTP/1.1 handshake.
struct Connector {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl Connector {
    fn new(addr: SocketAddr, cert_pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Body>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = self
            .tls
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("failed the HTTP/1.1 handshake")?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn connect_many(&self, n: usize) -> Result<Vec<SendRequest<Body>>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.connect().await?);
        }
        Ok(all)
    }
}

/// Sends one request and reads the whole response; `Err` on a transport error or non-200.
async fn send(sender: &mut SendRequest<Body>, req: &Req) -> Result<Bytes> {
    sender.ready().await?;
    let response = sender.send_request(req.build()?).await?;
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await?;
    ensure!(status == 200, "{} answered {status}", req.path);
    Ok(body)
}

/// CPU time and run-queue wait of the server's runtime threads (named `server`), from
/// /proc/self/task/*/schedstat. CPU per request does not depend on what else runs on the
/// machine; the wait shows how much the machine's other load delayed the server.
#[derive(Clone, Copy, Default)]
struct Sched {
    cpu: Duration,
    wait: Duration,
}

impl Sched {
    fn server() -> Result<Self> {
        let mut total = Self::default();
        for task in std::fs::read_dir("/proc/self/task").context("failed to list threads")? {
            let dir = task?.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue; // the thread ended
            };
            if comm.trim() != "server" {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
                continue;
            };
            let mut fields = stat
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            total.cpu += Duration::from_nanos(fields.next().unwrap_or(0));
            total.wait += Duration::from_nanos(fields.next().unwrap_or(0));
        }
        Ok(total)
    }

    fn since(self, before: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(before.cpu),
            wait: self.wait.saturating_sub(before.wait),
        }
    }
}

/// Latencies of one run, in microseconds.
#[derive(Default)]
struct Samples {
    /// From the scheduled send time (open loop) or the send (closed loop) to the response.
    latency: Vec<u32>,
    /// From the actual send to the response.
    service: Vec<u32>,
    /// When each request was due, from the start of the run (for `--dump`).
    due: Vec<u32>,
    errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.due.extend(other.due);
        self.errors += other.errors;
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The result of one run.
struct Run {
    endpoint: &'static str,
    mode: String,
    completed: usize,
    errors: u64,
    elapsed: Duration,
    latency: Percentiles,
    service: Percentiles,
    server: Sched,
}

#[derive(Clone, Copy, Default)]
struct Percentiles {
    p50: u32,
    p90: u32,
    p99: u32,
    p999: u32,
    max: u32,
}

impl Percentiles {
    fn of(mut v: Vec<u32>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }
}

impl Run {
    fn new(
        endpoint: &'static str,
        mode: String,
        samples: Samples,
        elapsed: Duration,
        server: Sched,
    ) -> Self {
        Self {
            endpoint,
            mode,
            completed: samples.latency.len(),
            errors: samples.errors,
            elapsed,
            latency: Percentiles::of(samples.latency),
            service: Percentiles::of(samples.service),
            server,
        }
    }

    /// Server CPU per request, µs.
    fn cpu_per_request(&self) -> f64 {
        self.server.cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    /// Server run-queue wait per request, µs.
    fn wait_per_request(&self) -> f64 {
        self.server.wait.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Open loop: a thread of its own puts `rate * duration` requests on a fixed timetable;
/// `connections` workers take them in order. Latency counts from the scheduled time, so a
/// request that waits for a free connection or a slow server is measured as late as it is.
async fn open_loop(
    connector: &Connector,
    endpoint: &'static str,
    requests: &Arc<Vec<Req>>,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Result<Run> {
    let senders = connector.connect_many(connections).await?;
    let sched = Sched::server()?;
    let total = (u64::from(rate) * duration.as_secs()) as usize;
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let mut workers = Vec::new();
    for mut sender in senders {
        let (rx, requests) = (rx.clone(), requests.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, scheduled)) = next else { break };
                let sent = Instant::now();
                let req = &requests[n % requests.len()];
                match send(&mut sender, req).await {
                    Ok(_) => {
                        let done = Instant::now();
                        samples.latency.push(micros(done - scheduled));
                        samples.service.push(micros(done - sent));
                        samples
                            .due
                            .push(micros(scheduled.saturating_duration_since(start)));
                    }
                    Err(_) => samples.errors += 1,
                }
            }
            samples
        }));
    }
    // A blocking thread sleeps far more precisely than the runtime's 1 ms timer wheel.
    let schedule = std::thread::spawn(move || {
        for n in 0..total {
            let at = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((n, at)).is_err() {
                break;
            }
        }
    });
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await?);
    }
    let elapsed = start.elapsed();
    if schedule.join().is_err() {
        bail!("the scheduling thread panicked");
    }
    if let Some(dir) = std::env::var_os("S2Z_BENCH_DUMP") {
        dump(&std::path::PathBuf::from(dir), endpoint, rate, &samples)?;
    }
    let server = Sched::server()?.since(sched);
    Ok(Run::new(
        endpoint,
        format!("open {rate}/s"),
        samples,
        elapsed,
        server,
    ))
}

/// Writes one open-loop run's samples as CSV (`due_us,latency_us,service_us`), to see when
/// the slow requests happened: `S2Z_BENCH_DUMP=<dir>`.
fn dump(dir: &std::path::Path, endpoint: &str, rate: u32, samples: &Samples) -> Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("due_us,latency_us,service_us\n");
    for ((due, latency), service) in samples
        .due
        .iter()
        .zip(&samples.latency)
        .zip(&samples.service)
    {
        writeln!(csv, "{due},{latency},{service}")?;
    }
    let slug: String = endpoint
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("{slug}-{rate}.csv");
    std::fs::write(dir.join(&name), csv).with_context(|| format!("failed to write {name}"))?;
    Ok(())
}

/// Closed loop: `connections` workers send back to back for `duration`.
async fn closed_loop(
    connector: &Connector,
    endpoint: &'static str,
    requests: &Arc<Vec<Req>>,
    duration: Duration,
    connections: usize,
) -> Result<Run> {
    let senders = connector.connect_many(connections).await?;
    let sched = Sched::server()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for (w, mut sender) in senders.into_iter().enumerate() {
        let requests = requests.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut n = w;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match send(&mut sender, &requests[n % requests.len()]).await {
                    Ok(_) => {
                        let took = micros(sent.elapsed());
                        samples.latency.push(took);
                        samples.service.push(took);
                    }
                    Err(_) => samples.errors += 1,
                }
                n += connections;
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await?);
    }
    let elapsed = start.elapsed();
    let server = Sched::server()?.since(sched);
    Ok(Run::new(
        endpoint,
        format!("closed {connections} conn"),
        samples,
        elapsed,
        server,
    ))
}

struct Report {
    /// Open-loop runs.
    runs: Vec<Run>,
    /// Closed-loop runs, every round.
    closed: Vec<Run>,
    checked: String,
}

impl Report {
    /// The closed-loop run of `endpoint` with the median throughput of the rounds.
    fn median_closed(&self, endpoint: &str) -> Option<&Run> {
        let mut runs: Vec<&Run> = self
            .closed
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .collect();
        runs.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        runs.get(runs.len() / 2).copied()
    }

    /// The median over rounds of `endpoint`'s throughput as a percentage of `baseline`'s in the
    /// same round.
    fn median_ratio(&self, endpoint: &str, baseline: &str) -> Option<f64> {
        let of = |name: &str| -> Vec<f64> {
            self.closed
                .iter()
                .filter(|r| r.endpoint == name)
                .map(Run::throughput)
                .collect()
        };
        let mut ratios: Vec<f64> = of(endpoint)
            .into_iter()
            .zip(of(baseline))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| 100.0 * a / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    }

    /// Every round's throughput of `endpoint`, for the report.
    fn rounds(&self, endpoint: &str) -> String {
        self.closed
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| format!("{:.0}", r.throughput()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Endpoint names of the report.
const GET_NOOP: &str = "GET /noop";
const POST_NOOP: &str = "POST /noop";
const MUTATE: &str = "POST /mutate";

async fn run(args: &Args, addr: SocketAddr, cert_pem: &str) -> Result<Report> {
    let connector = Connector::new(addr, cert_pem)?;
    let mutate = Arc::new(mutate_requests(args.orgs));
    let selected =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    // Measured open and closed loop: the baselines and /mutate.
    let endpoints: Vec<(&'static str, Arc<Vec<Req>>)> = [
        (GET_NOOP, Arc::new(bodiless_noop())),
        (POST_NOOP, Arc::new(same_bodies(&mutate, "/noop"))),
        (MUTATE, mutate.clone()),
    ]
    .into_iter()
    .filter(|(name, _)| selected(name))
    .collect();
    // Closed loop only: the calibration. A few names, leaked once: the report borrows them.
    let busy: Vec<(&'static str, Arc<Vec<Req>>)> = args
        .busy
        .iter()
        .map(|us| {
            let path: &'static str = Box::leak(format!("/bench/busy/{us}").into_boxed_str());
            let name: &'static str = Box::leak(format!("POST {path}").into_boxed_str());
            (name, Arc::new(same_bodies(&mutate, path)))
        })
        .filter(|(name, _)| selected(name))
        .collect();
    let checked = check_answers(&connector, &mutate).await?;
    let duration = Duration::from_secs(args.duration);

    // Warm up every path (allocator, caches, branch predictors), unmeasured.
    let warm = Duration::from_secs(1);
    for (endpoint, requests) in endpoints.iter().chain(&busy) {
        closed_loop(&connector, endpoint, requests, warm, args.connections).await?;
    }

    let mut runs = Vec::new();
    for &rate in &args.rates {
        for (endpoint, requests) in &endpoints {
            let run = open_loop(
                &connector,
                endpoint,
                requests,
                rate,
                duration,
                args.open_connections,
            )
            .await?;
            eprintln!(
                "  {endpoint:20} open {rate:>5}/s  p50 {:>6} µs  p99 {:>6} µs",
                run.latency.p50, run.latency.p99
            );
            runs.push(run);
        }
    }
    // Rounds, each endpoint in turn, so that every endpoint sees the same spread of machine load.
    let mut closed = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for (endpoint, requests) in endpoints.iter().chain(&busy) {
            let run =
                closed_loop(&connector, endpoint, requests, duration, args.connections).await?;
            eprintln!(
                "  {endpoint:20} closed {} conn, round {round}  {:.0} req/s",
                args.connections,
                run.throughput()
            );
            closed.push(run);
        }
    }
    Ok(Report {
        runs,
        closed,
        checked,
    })
}

/// Before measuring, checks that /mutate answers as it should: dormant orgs' revisions get a
/// patch, exempt orgs' do not.
async fn check_answers(connector: &Connector, mutate: &Arc<Vec<Req>>) -> Result<String> {
    let mut sender = connector.connect().await?;
    let (mut patched, mut unchanged) = (0, 0);
    for req in mutate.iter() {
        let body = send(&mut sender, req).await?;
        let review: Value = serde_json::from_slice(&body)?;
        ensure!(
            review["response"]["allowed"] == true,
            "not allowed: {review}"
        );
        // admission.k8s.io/v1 `patch` is []byte: a base64 string on the wire.
        if let Some(patch) = review["response"].get("patch") {
            ensure!(
                patch.is_string(),
                "the patch is not a base64 string: {review}"
            );
            patched += 1;
        } else {
            unchanged += 1;
        }
    }
    ensure!(
        patched > 0 && unchanged > 0,
        "expected both patched and unchanged answers, got {patched} patched and {unchanged} unchanged"
    );
    Ok(format!(
        "{patched} of {} distinct reviews patched, {unchanged} unchanged (exempt orgs)",
        mutate.len()
    ))
}

struct Memory {
    start: u64,
    filled: u64,
    after: u64,
    fill_time: Duration,
}

fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

fn print_report(args: &Args, report: &Report, memory: Memory, review_cost: Duration) {
    println!();
    println!(
        "s2z-webhook /mutate benchmark: TLS 1.3, HTTP/1.1 keep-alive, {} orgs cached, server {} worker threads, {} s per run, {} closed-loop rounds, logging {}",
        args.orgs,
        args.server_threads,
        args.duration,
        args.rounds,
        if args.log {
            "on (JSON at info, sink)"
        } else {
            "off"
        }
    );
    println!("answers: {}", report.checked);
    println!(
        "admission::review() alone, one thread, no HTTP/TLS: {:.1} µs CPU per review",
        review_cost.as_secs_f64() * 1e6
    );
    println!();
    println!(
        "| endpoint             | load                  | done   | err | req/s   | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 service ms | srv CPU µs/req | srv wait µs/req |"
    );
    println!(
        "|----------------------|-----------------------|--------|-----|---------|--------|--------|--------|----------|--------|----------------|----------------|-----------------|"
    );
    let mut names: Vec<&str> = Vec::new();
    for run in &report.closed {
        if !names.contains(&run.endpoint) {
            names.push(run.endpoint);
        }
    }
    let medians = names.iter().filter_map(|name| report.median_closed(name));
    for run in report.runs.iter().chain(medians) {
        let mode = if run.mode.starts_with("closed") {
            format!("{} (median)", run.mode)
        } else {
            run.mode.clone()
        };
        println!(
            "| {:20} | {:21} | {:>6} | {:>3} | {:>7.0} | {:>6} | {:>6} | {:>6} | {:>8} | {:>6} | {:>14} | {:>14.0} | {:>15.0} |",
            run.endpoint,
            mode,
            run.completed,
            run.errors,
            run.throughput(),
            ms(run.latency.p50),
            ms(run.latency.p90),
            ms(run.latency.p99),
            ms(run.latency.p999),
            ms(run.latency.max),
            ms(run.service.p99),
            run.cpu_per_request(),
            run.wait_per_request(),
        );
    }
    println!();
    println!(
        "max throughput, closed loop, {} connections, median of {} rounds (req/s of each round):",
        args.connections, args.rounds
    );
    for name in &names {
        let ratio = |baseline: &str| {
            report
                .median_ratio(name, baseline)
                .map_or("-".to_owned(), |r| format!("{r:.1}%"))
        };
        println!(
            "  {name:20} {:>7.0} req/s  = {:>6} of POST /noop, {:>6} of GET /noop   ({})",
            report.median_closed(name).map_or(0.0, Run::throughput),
            ratio(POST_NOOP),
            ratio(GET_NOOP),
            report.rounds(name),
        );
    }
    if let Some(ratio) = report.median_ratio(MUTATE, POST_NOOP) {
        println!(
            "target: /mutate >= 80% of the no-op webhook (POST /noop, same reviews): {ratio:.1}%"
        );
    }
    let cpu = |endpoint: &str| {
        report
            .median_closed(endpoint)
            .map_or(0.0, Run::cpu_per_request)
    };
    let (mutate_cpu, noop_cpu) = (cpu(MUTATE), cpu(POST_NOOP));
    println!(
        "server CPU per request (closed loop, median round): /mutate {mutate_cpu:.0} µs, POST /noop {noop_cpu:.0} µs: on 2 dedicated cores the server alone would top out near {:.0} and {:.0} req/s",
        2e6 / mutate_cpu.max(1.0),
        2e6 / noop_cpu.max(1.0),
    );
    let p99_at = |endpoint: &str, mode: &str| {
        report
            .runs
            .iter()
            .find(|r| r.endpoint == endpoint && r.mode == mode)
            .map(|r| ms(r.latency.p99))
    };
    if let Some(p99) = p99_at(MUTATE, "open 2000/s") {
        println!(
            "p99 at 2000 req/s: /mutate {p99} ms, POST /noop {} ms (target <= 2 ms)",
            p99_at(POST_NOOP, "open 2000/s").unwrap_or_else(|| "-".to_owned())
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "resident memory (VmRSS): {:.1} MiB before the caches, {:.1} MiB with {} orgs + {} namespaces cached (+{:.1} MiB, {:.2} KiB per org+namespace, filled in {:.2} s), {:.1} MiB after the load",
        mib(memory.start),
        mib(memory.filled),
        args.orgs,
        args.orgs,
        mib(memory.filled.saturating_sub(memory.start)),
        memory.filled.saturating_sub(memory.start) as f64 / args.orgs.max(1) as f64,
        memory.fill_time.as_secs_f64(),
        mib(memory.after),
    );
}
