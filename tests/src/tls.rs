//! Self-signed serving certificates for test servers that the API server calls by URL.

use anyhow::{Context, Result};
use base64::Engine;

/// A certificate for 127.0.0.1 and localhost, with its key, both PEM.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    pub fn localhost() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .context("failed to generate a test certificate")?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }

    /// The `caBundle` for a webhook configuration: the self-signed cert is its own CA.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.cert_pem)
    }

    /// A rustls server config serving this certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("failed to parse the test certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("failed to parse the test key")?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("failed to select TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("failed to build the TLS server config")
    }
}
