//! The serving certificate: loaded from PEM files at start, re-read when the files change (checked
//! every second) so a rotated Secret needs no restart and drops no connection. A bad new pair is
//! logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use tokio_util::sync::CancellationToken;

/// How often the files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no (valid) PEM certificate.
    #[error("failed to load certificate {}: {why}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The key file holds no (valid, supported) PEM private key.
    #[error("failed to load private key {}: {why}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The key is not the certificate's.
    #[error("failed to pair certificate {} with key {}: {why}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        why: String,
    },
    /// The rustls configuration could not be built.
    #[error("failed to build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The bytes of a certificate file and a key file. Comparing contents, not mtimes, catches
/// every change: file timestamps are coarse, and a same-size rewrite within one tick would
/// otherwise go unnoticed. The files are a few KiB, read once a second.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Contents {
    fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: read(cert)?,
            key: read(key)?,
        })
    }
}

/// The serving certificate, re-read from its files when they change.
#[derive(Debug)]
pub struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The contents last tried, good or bad: a bad pair is reported once.
    tried: Mutex<Contents>,
}

impl CertReloader {
    /// Loads the pair, failing with an error naming the bad file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = Contents::read(cert_path, key_path)?;
        let key = load_pair(cert_path, key_path, &contents, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            tried: Mutex::new(contents),
        })
    }

    /// The certificate and key being served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the pair if either file changed since last tried. `Ok(true)`: a new pair is
    /// being served. `Err`: the files changed but the new pair is bad; the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = Contents::read(&self.cert_path, &self.key_path)?;
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if *tried == contents {
                return Ok(false);
            }
            tried.clone_from(&contents);
        }
        let key = load_pair(&self.cert_path, &self.key_path, &contents, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// A rustls server configuration that serves whatever this reloader holds, with TLS 1.2
    /// and 1.3 and ALPN for HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `cancel`, logging reloads and errors.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match result {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "reloaded the serving certificate"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "keeping the previous serving certificate"
                ),
                Err(error) => tracing::error!(%error, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Parses and checks a certificate chain and its private key.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |why: String| TlsError::Cert {
        path: cert_path.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM CERTIFICATE block found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        why: e.to_string(),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.to_owned(),
            why: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(e)) => Err(TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            why: format!("{e:?}"),
        }),
        Err(e) => Err(cert_error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn generate(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, pair: &Pair) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        // Write to a temporary name and rename, as a Secret volume update does.
        for (path, content) in [(&cert, &pair.cert), (&key, &pair.key)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, content).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
        (cert, key)
    }

    fn served(reloader: &CertReloader) -> Vec<u8> {
        reloader.current().cert[0].as_ref().to_vec()
    }

    fn der_of(pair: &Pair) -> Vec<u8> {
        CertificateDer::from_pem_slice(pair.cert.as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec()
    }

    #[test]
    fn loads_a_valid_pair_and_builds_a_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = generate("a.example");
        let (cert, key) = write(dir.path(), &pair);
        let reloader = Arc::new(CertReloader::load(&cert, &key).expect("load"));
        assert_eq!(served(&reloader), der_of(&pair));
        reloader.server_config().expect("config");
        assert!(!reloader.reload_if_changed().expect("unchanged"));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = generate("a.example");
        let (cert, key) = write(dir.path(), &pair);
        let missing = dir.path().join("nope.key");
        let err = CertReloader::load(&cert, &missing).expect_err("missing key");
        assert!(err.to_string().contains("nope.key"), "{err}");
        std::fs::write(&cert, "not a cert").expect("write");
        let err = CertReloader::load(&cert, &key).expect_err("bad cert");
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (generate("a.example"), generate("b.example"));
        let (cert, key) = write(
            dir.path(),
            &Pair {
                cert: one.cert,
                key: two.key,
            },
        );
        let err = CertReloader::load(&cert, &key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn rotation_is_picked_up_and_a_bad_pair_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate("a.example");
        let (cert, key) = write(dir.path(), &first);
        let reloader = CertReloader::load(&cert, &key).expect("load");

        let second = generate("a.example");
        write(dir.path(), &second);
        assert!(reloader.reload_if_changed().expect("reload"));
        assert_eq!(served(&reloader), der_of(&second));

        // A half-written rotation: new cert, old key. Reported once, old pair kept.
        let third = generate("a.example");
        std::fs::write(&cert, &third.cert).expect("write");
        reloader.reload_if_changed().expect_err("mismatch");
        assert!(!reloader.reload_if_changed().expect("reported once"));
        assert_eq!(served(&reloader), der_of(&second));

        // The key arrives: the new pair is served.
        std::fs::write(&key, &third.key).expect("write");
        assert!(reloader.reload_if_changed().expect("reload"));
        assert_eq!(served(&reloader), der_of(&third));
    }
}
