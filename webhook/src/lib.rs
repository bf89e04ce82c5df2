//! s2z-webhook: the in-cluster part of s2z. Every replica serves the Revision mutating webhook
//! from watch-fed caches. Later additions: the leader-elected dormancy controller
//! (`controller/`) and the activity endpoint (`activity.rs`), both built on [`state::AppState`]
//! and merged into [`server::tls_router`].

pub mod admission;
pub mod cache;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tls;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheScope, Caches};
use crate::config::Config;
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
    let watches = tokio::spawn(writers.run(caches.clone(), client.clone(), background.clone()));
    let reloads = tokio::spawn(certs.clone().watch(background.clone()));

    let mut registry = Registry::with_prefix("s2z_webhook");
    let admission_metrics = AdmissionMetrics::register(&mut registry);
    let state = AppState::new(client, caches, admission_metrics, registry);

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
        "s2z-webhook serving"
    );

    server::shutdown_signal().await;
    state.start_draining();
    if !config.shutdown_delay.is_zero() {
        tracing::info!(delay = ?config.shutdown_delay, "not ready; waiting before closing listeners");
        tokio::time::sleep(config.shutdown_delay).await;
    }
    serving.cancel();
    let _ = tokio::join!(tls_server, plain_server);
    background.cancel();
    let _ = tokio::join!(watches, reloads);
    tracing::info!("s2z-webhook stopped");
    Ok(())
}
