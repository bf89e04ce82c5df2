//! s2z-webhook: the in-cluster part of s2z. Every replica serves the Revision mutating webhook
//! from watch-fed caches and the activity endpoint (`activity/`); the replica holding the
//! `s2z-controller` Lease also runs the dormancy controller (`controller/`). [`run`] wires them.

pub mod activity;
pub mod admission;
pub mod cache;
pub mod config;
pub mod controller;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tls;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::activity::auth::Authenticator;
use crate::activity::metrics::ActivityMetrics;
use crate::cache::{CacheScope, Caches};
use crate::config::Config;
use crate::controller::leader::{self, LeaseConfig};
use crate::controller::metrics::ControllerMetrics;
use crate::metrics::AdmissionMetrics;
use crate::state::AppState;
use crate::tls::{CertReloader, TlsError};

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate or key is missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A port could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No Kubernetes client configuration was found (in-cluster or KUBECONFIG).
    #[error("failed to create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Runs the webhook until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: Config) -> Result<(), Error> {
    // kube's client and our server both use ring; a process default keeps rustls from guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = Arc::new(CertReloader::load(
        &config.tls_cert_file,
        &config.tls_key_file,
    )?);
    let tls = certs.server_config()?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    };
    let tls_listener = bind(config.tls_addr).await?;
    let metrics_listener = bind(config.metrics_addr).await?;
    let client = kube::Client::try_default().await.map_err(Error::Client)?;

    let background = CancellationToken::new();
    let (caches, writers) = Caches::new(CacheScope {
        namespace: config.namespace.clone(),
        knative_namespace: config.knative_namespace.clone(),
    });
    let writers = writers.with_org_selector(config.org_selector.clone());
    let watches = tokio::spawn(writers.run(caches.clone(), client.clone(), background.clone()));
    let reloads = tokio::spawn(certs.clone().watch(background.clone()));

    let mut registry = Registry::with_prefix("s2z_webhook");
    let admission_metrics = AdmissionMetrics::register(&mut registry);
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let activity_metrics = ActivityMetrics::register(&mut registry);
    let (leader_tx, leader_rx) = watch::channel(false);
    controller::schedule::register(&mut registry, caches.clone(), leader_rx.clone());

    // Pending activity outlives the servers: it is flushed after the last request is answered.
    let writing = CancellationToken::new();
    let (queue, writer) = activity::queue::spawn(
        client.clone(),
        caches.clone(),
        activity_metrics.clone(),
        writing.clone(),
        config.activity_flush_timeout,
    );
    let activity = Activity {
        auth: Authenticator::new(
            client.clone(),
            config.auth_cache_ttl,
            activity_metrics.clone(),
        ),
        queue: queue.clone(),
        metrics: activity_metrics,
    };

    // The controller stops first at shutdown, so that the Lease is handed over at once.
    let leading = CancellationToken::new();
    let recorder = Arc::new(Recorder::new(
        client.clone(),
        Reporter {
            controller: "s2z-controller".into(),
            instance: Some(config.leader_id.clone()),
        },
    ));
    let mut controller_tasks = vec![tokio::spawn(controller::settings::monitor(
        caches.clone(),
        controller_metrics.clone(),
        recorder.clone(),
        leader_rx.clone(),
        leading.clone(),
    ))];
    if config.controller {
        let lease = LeaseConfig {
            namespace: config.namespace.clone(),
            identity: config.leader_id.clone(),
            lease_duration: config.lease_duration,
            renew_deadline: config.renew_deadline,
            retry_period: config.retry_period,
        };
        controller_tasks.push(tokio::spawn(leader::run(
            client.clone(),
            lease,
            leader_tx,
            leading.clone(),
        )));
        let parts = controller::Parts {
            client: client.clone(),
            caches: caches.clone(),
            recorder,
            metrics: controller_metrics,
            options: controller::Options {
                knative_namespace: config.knative_namespace.clone(),
                knative_version: config.knative_version,
                org_selector: config.org_selector.clone(),
                wake_on_traffic: config.wake_on_traffic,
            },
            activity: Some(queue),
        };
        controller_tasks.push(tokio::spawn(controller::run(
            parts,
            leader_rx,
            leading.clone(),
        )));
    }

    let state =
        AppState::with_activity(client, caches, admission_metrics, registry, Some(activity));

    let serving = CancellationToken::new();
    let tls_server = tokio::spawn(server::serve_tls(
        tls_listener,
        tls,
        server::tls_router(state.clone()),
        serving.clone(),
        config.drain_timeout,
    ));
    let plain_server = tokio::spawn(server::serve_plain(
        metrics_listener,
        server::metrics_router(state.clone()),
        serving.clone(),
        config.drain_timeout,
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        tls = %config.tls_addr,
        metrics = %config.metrics_addr,
        namespace = %config.namespace,
        identity = %config.leader_id,
        controller = config.controller,
        org_selector = config.org_selector.as_deref().unwrap_or(""),
        "s2z-webhook serving"
    );

    server::shutdown_signal().await;
    leading.cancel();
    futures::future::join_all(controller_tasks).await;
    state.start_draining();
    if !config.shutdown_delay.is_zero() {
        tracing::info!(delay = ?config.shutdown_delay, "not ready; waiting before closing listeners");
        tokio::time::sleep(config.shutdown_delay).await;
    }
    serving.cancel();
    let _ = tokio::join!(tls_server, plain_server);
    writing.cancel();
    let _ = writer.await;
    background.cancel();
    let _ = tokio::join!(watches, reloads);
    tracing::info!("s2z-webhook stopped");
    Ok(())
}
