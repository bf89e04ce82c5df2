//! The production server on a local port, with a fresh certificate and a bench-only
//! calibration route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use prometheus_client::registry::Registry;
use s2z_webhook::cache::Caches;
use s2z_webhook::metrics::AdmissionMetrics;
use s2z_webhook::state::AppState;
use s2z_webhook::tls::CertReloader;
use s2z_webhook::{server, state::SharedState};
use tokio_util::sync::CancellationToken;

/// A client whose every call fails: the admission path makes none.
pub(crate) fn offline_client() -> kube::Client {
    let service = tower::service_fn(|_request: axum::http::Request<kube::client::Body>| async {
        Err::<axum::http::Response<Body>, _>(std::io::Error::other("no API server in the bench"))
    });
    kube::Client::new(service, "default")
}

/// Writes a fresh self-signed cert for localhost and loads it through the production reloader.
pub(crate) fn serving_cert(dir: &std::path::Path) -> Result<(String, Arc<rustls::ServerConfig>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .context("failed to generate a certificate")?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    let reloader = Arc::new(CertReloader::load(&cert, &key)?);
    Ok((ck.cert.pem(), reloader.server_config()?))
}

pub(crate) async fn start_server(
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
