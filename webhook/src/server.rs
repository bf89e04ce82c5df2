//! The two HTTP servers: the TLS port (`/mutate`, `/noop`, `/version`, and the activity
//! endpoint `/v1/orgs/{org}/activity`) with its own accept loop so the certificate can rotate, and the plain port
//! (`/healthz`, `/readyz`, `/metrics`). Both stop accepting on shutdown and drain in-flight
//! requests.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, MAX_BODY_BYTES, ReviewError};
use crate::metrics::{RequestKind, RequestOutcome};
use crate::state::SharedState;

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to send request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes of the TLS port. Add a feature by merging its own `Router<SharedState>` here.
pub fn tls_router(state: SharedState) -> Router {
    Router::new()
        .merge(admission_routes())
        .merge(info_routes())
        .merge(crate::activity::routes())
        .with_state(state)
}

/// `POST /mutate`.
fn admission_routes() -> Router<SharedState> {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// `/noop` (the benchmark's baseline: a webhook that does nothing; `POST` reads the body, as
/// every webhook must, and discards it) and `GET /version`.
fn info_routes() -> Router<SharedState> {
    Router::new()
        .route("/noop", get(noop).post(noop_post))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route("/version", get(version))
}

/// The routes of the plain-HTTP port.
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn mutate(State(state): State<SharedState>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let other = RequestKind(admission::ObjectKind::Other);
    let observe = |outcome, kind, warned| {
        state
            .admission_metrics
            .observe(outcome, kind, warned, started.elapsed());
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            observe(RequestOutcome::TooLarge, other, false);
            tracing::warn!("rejected an AdmissionReview over {MAX_BODY_BYTES} bytes");
            let message = format!("AdmissionReview body is larger than {MAX_BODY_BYTES} bytes");
            return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
        }
        Err(rejection) => {
            observe(RequestOutcome::Invalid, other, false);
            return (rejection.status(), rejection.body_text()).into_response();
        }
    };
    match admission::review(&body, state.caches.as_ref(), chrono::Utc::now()) {
        Ok(reviewed) => {
            let warned = !reviewed.warnings.is_empty();
            observe(reviewed.outcome.into(), RequestKind(reviewed.kind), warned);
            log_reviewed(&reviewed);
            ([(header::CONTENT_TYPE, "application/json")], reviewed.body).into_response()
        }
        Err(error @ (ReviewError::Encode(_) | ReviewError::EncodePatch(_))) => {
            observe(RequestOutcome::Error, other, false);
            tracing::error!(%error, "admission failed");
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
        Err(error) => {
            observe(RequestOutcome::Invalid, other, false);
            tracing::warn!(%error, "rejected a malformed AdmissionReview");
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    }
}

/// One line per admission: at info when it changed something or warned the user, at debug
/// when it left the object as it was (another org's, an exempt org's, already right), which is
/// most admissions and, formatted as JSON, a tenth of their CPU time.
fn log_reviewed(reviewed: &admission::Reviewed) {
    macro_rules! log_at {
        ($level:expr) => {
            tracing::event!(
                $level,
                uid = %reviewed.uid,
                object = %reviewed.object,
                kind = reviewed.kind.as_str(),
                org = reviewed.org.as_deref().unwrap_or(""),
                state = reviewed.state.map(|s| s.as_str()).unwrap_or(""),
                outcome = reviewed.outcome.as_str(),
                operations = reviewed.operations,
                warnings = ?reviewed.warnings,
                "admission reviewed"
            )
        };
    }
    if reviewed.outcome == admission::Outcome::Patched || !reviewed.warnings.is_empty() {
        log_at!(tracing::Level::INFO);
    } else {
        log_at!(tracing::Level::DEBUG);
    }
}

async fn noop() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true}"#,
    )
}

async fn noop_post(body: Bytes) -> impl IntoResponse {
    std::hint::black_box(body);
    noop().await
}

async fn version() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<SharedState>) -> Response {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let unsynced = state.caches.unsynced();
    if unsynced.is_empty() {
        "ok".into_response()
    } else {
        let message = format!("waiting for caches to sync: {}", unsynced.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

async fn metrics(State(state): State<SharedState>) -> Response {
    match crate::metrics::render(&state.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to render metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`, then stops accepting and gives
/// open connections up to `drain` to finish their requests.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(%error, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("TLS listener closed; draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("TLS connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain timeout: closing TLS connections"),
    }
}

/// Serves `router` over plain HTTP on `listener` until `shutdown`, draining for at most `drain`.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let stopping = shutdown.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
    let deadline = async {
        stopping.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server => if let Err(error) = result {
            tracing::error!(%error, "metrics server failed");
        },
        () = deadline => tracing::warn!("drain timeout: closing metrics connections"),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
