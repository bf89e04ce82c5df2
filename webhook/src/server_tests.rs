//! Tests of the routers (in memory) and of the TLS server (on loopback, with rotated certs).

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::*;
use crate::cache::{CacheScope, Caches};
use crate::metrics::AdmissionMetrics;
use crate::state::AppState;
use crate::tls::CertReloader;

/// A client whose every call fails: the routes under test must not use it.
fn offline_client() -> kube::Client {
    let service = tower::service_fn(|_request: Request<kube::client::Body>| async {
        Err::<axum::http::Response<Body>, _>(std::io::Error::other("no API server in unit tests"))
    });
    kube::Client::new(service, "default")
}

fn state() -> SharedState {
    let (caches, _writers) = Caches::new(CacheScope {
        namespace: "s2z-system".into(),
        knative_namespace: "knative-serving".into(),
    });
    let mut registry = Registry::with_prefix("s2z_webhook");
    let metrics = AdmissionMetrics::register(&mut registry);
    AppState::new(offline_client(), caches, metrics, registry)
}

async fn call(router: Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn pod_review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": "default", "operation": "CREATE",
            "userInfo": {}, "object": {"metadata": {"name": "p"}},
        }
    }))
    .expect("json")
}

#[tokio::test]
async fn info_routes_answer() {
    let router = tls_router(state());
    let (status, body) = call(router.clone(), "GET", "/version", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let version: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = call(router.clone(), "GET", "/noop", vec![]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok":true}"#));
    let (status, body) = call(router, "POST", "/noop", pod_review()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok":true}"#));
}

#[tokio::test]
async fn mutate_answers_and_rejects() {
    let state = state();
    let router = tls_router(state.clone());
    let (status, body) = call(router.clone(), "POST", "/mutate", pod_review()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let review: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(review["response"]["uid"], "u-1");
    assert_eq!(review["response"]["allowed"], true);

    let (status, body) = call(router.clone(), "POST", "/mutate", b"nope".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not JSON"), "{body}");

    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _) = call(router.clone(), "POST", "/mutate", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, text) = call(metrics_router(state), "GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"s2z_webhook_admission_requests_total{outcome="skipped",kind="other"} 1"#,
        r#"s2z_webhook_admission_requests_total{outcome="invalid",kind="other"} 1"#,
        r#"s2z_webhook_admission_requests_total{outcome="too_large",kind="other"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn readiness_follows_caches_and_shutdown() {
    let state = state();
    let router = metrics_router(state.clone());
    let (status, _) = call(router.clone(), "GET", "/healthz", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(router.clone(), "GET", "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("orgs"), "{body}");
    state.start_draining();
    let (status, body) = call(router, "GET", "/readyz", vec![]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    );
}

fn write_pair(dir: &Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
    cert.der().to_vec()
}

/// Connects, accepting any certificate but reporting which one was served, and GETs `path`.
async fn get_over_tls(
    addr: std::net::SocketAddr,
    path: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> (Vec<u8>, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let served = tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    (served, String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn tls_serves_rotates_and_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write_pair(dir.path());
    let certs = Arc::new(
        CertReloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).expect("load"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_tls(
        listener,
        certs.server_config().expect("config"),
        tls_router(state()),
        shutdown.clone(),
        Duration::from_secs(5),
    ));

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (served, response) = get_over_tls(addr, "/version", version).await;
        assert_eq!(served, first);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(env!("CARGO_PKG_VERSION")), "{response}");
    }

    let second = write_pair(dir.path());
    assert!(certs.reload_if_changed().expect("reload"));
    let (served, _) = get_over_tls(addr, "/noop", &rustls::version::TLS13).await;
    assert_eq!(served, second);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("join");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path());
    let certs = Arc::new(
        CertReloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).expect("load"),
    );
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_tls(
        listener,
        certs.server_config().expect("config"),
        slow,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    let request = tokio::spawn(get_over_tls(addr, "/slow", &rustls::version::TLS13));
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    let (_, response) = request.await.expect("join");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("join");
}

/// Certificate verifier for tests: trusts anything, still checks signatures.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
