//! The activity endpoint, `POST /v1/orgs/{org}/activity` on the TLS port: a platform's gateway
//! or app tells s2z that an org is in use, so it stays (or becomes) active.
//!
//! The request is authenticated (TokenReview) and authorized (SubjectAccessReview on
//! `orgs/activity`), checked against the Org cache, and handed to the writer ([`queue`]),
//! which rate-limits and coalesces per org. Every replica serves it; writes are safe from any
//! number of replicas (see [`write`]).

pub mod auth;
pub mod metrics;
pub mod parts;
pub mod queue;
pub mod write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{SubsecRound, Utc};
use s2z_core::activity::parse_signal;
use s2z_core::org::OrgState;
use serde_json::json;

pub use self::parts::Activity;

use self::auth::{AuthError, bearer, token_key};
use self::queue::{Signal, SubmitError};
use crate::state::SharedState;
use crate::view::{ClusterView, evaluate_org};

/// Largest accepted request body; a signal is a few dozen bytes.
const MAX_BODY_BYTES: usize = 4096;

/// Why a request was not accepted, and how to answer.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("failed to read the activity request: {0}")]
    BadRequest(String),
    #[error("failed to find org {0}: no such Org (or not served by this s2z)")]
    UnknownOrg(String),
    #[error(transparent)]
    Queue(#[from] SubmitError),
    #[error("failed to accept activity: the activity endpoint is not enabled on this replica")]
    Disabled,
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Auth(AuthError::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            Rejection::Auth(AuthError::Forbidden { .. }) => StatusCode::FORBIDDEN,
            Rejection::Auth(AuthError::Unavailable { .. })
            | Rejection::Queue(_)
            | Rejection::Disabled => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::UnknownOrg(_) => StatusCode::NOT_FOUND,
        }
    }
}

/// `POST /v1/orgs/{org}/activity`.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/orgs/{org}/activity", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn handle(
    State(state): State<SharedState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(activity) = state.activity.as_ref() else {
        return reject(&org, &Rejection::Disabled);
    };
    let (status, response) = match accept(&state, activity, &org, &headers, body).await {
        Ok(response) => (StatusCode::ACCEPTED, response),
        Err(rejection) => (rejection.status(), reject(&org, &rejection)),
    };
    activity.metrics.request(status.as_u16());
    response
}

fn reject(org: &str, rejection: &Rejection) -> Response {
    let status = rejection.status();
    let message = rejection.to_string();
    if status.is_server_error() {
        tracing::warn!(org, %status, error = %message, "activity refused");
    } else {
        tracing::info!(org, %status, error = %message, "activity refused");
    }
    let body = axum::Json(json!({"error": message}));
    if status == StatusCode::UNAUTHORIZED {
        (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

async fn accept(
    state: &SharedState,
    activity: &Activity,
    org: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Rejection> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = bearer(header).ok_or_else(|| {
        AuthError::Unauthenticated(
            "send the ServiceAccount token as `Authorization: Bearer <token>`".into(),
        )
    })?;
    let key = token_key(token);
    let user = activity.auth.authenticate(key, token).await?;
    activity.auth.authorize(key, &user, org).await?;

    let body = body.map_err(|e| Rejection::BadRequest(e.body_text()))?;
    let now = Utc::now();
    let signal = parse_signal(&body, now).map_err(|e| Rejection::BadRequest(e.to_string()))?;
    let object = state
        .caches
        .org(org)
        .ok_or_else(|| Rejection::UnknownOrg(org.to_string()))?;
    let config = state.caches.config();
    let urgent = evaluate_org(&object, &config.settings, now).state == OrgState::Dormant;
    // Millisecond precision, like every timestamp s2z writes, so equal signals compare equal.
    let at = signal.at.trunc_subsecs(3);
    activity.queue.submit(Signal {
        org: org.to_string(),
        at,
        urgent,
    })?;
    tracing::debug!(org, at = %at, urgent, clamped = signal.clamped, user = user.username.as_deref().unwrap_or(""), "activity accepted");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "org": org,
            "at": write::text(at),
            "clamped": signal.clamped,
            "wakes": urgent,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use prometheus_client::registry::Registry;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::auth::Authenticator;
    use super::metrics::ActivityMetrics;
    use crate::cache::{CacheScope, Caches};
    use crate::metrics::AdmissionMetrics;
    use crate::state::AppState;

    /// A client whose every call fails, as when the API server is unreachable.
    fn offline_client() -> kube::Client {
        let service = tower::service_fn(|_request: Request<kube::client::Body>| async {
            Err::<axum::http::Response<Body>, _>(std::io::Error::other("no API server"))
        });
        kube::Client::new(service, "default")
    }

    fn state(with_activity: bool) -> SharedState {
        let (caches, _writers) = Caches::new(CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        });
        let mut registry = Registry::with_prefix("s2z_webhook");
        let admission = AdmissionMetrics::register(&mut registry);
        let metrics = ActivityMetrics::register(&mut registry);
        let activity = with_activity.then(|| {
            let (queue, _writer) = queue::spawn(
                offline_client(),
                caches.clone(),
                metrics.clone(),
                CancellationToken::new(),
                Duration::from_secs(1),
            );
            Activity {
                auth: Authenticator::new(
                    offline_client(),
                    Duration::from_secs(30),
                    metrics.clone(),
                ),
                queue,
                metrics,
            }
        });
        AppState::with_activity(offline_client(), caches, admission, registry, activity)
    }

    async fn post(state: SharedState, auth: Option<&str>) -> (StatusCode, String, HeaderMap) {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/orgs/acme/activity");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(Body::empty()).unwrap_or_default();
        let router = crate::server::tls_router(state);
        let response = match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    #[tokio::test]
    async fn no_token_is_401_with_a_challenge() {
        let (status, body, headers) = post(state(true), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        assert!(body.contains("failed to authenticate"), "{body}");
        let (status, _, _) = post(state(true), Some("Basic dXNlcjpwdw==")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_503_not_401() {
        let (status, body, _) = post(state(true), Some("Bearer abc")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("TokenReview"), "{body}");
    }

    #[tokio::test]
    async fn without_the_endpoint_it_is_503() {
        let (status, body, _) = post(state(false), Some("Bearer abc")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
}
