//! A real `s2z-webhook` process on the host, talking to the plane, and its registration with the
//! API server by URL: the way every webhook integration test runs the webhook.
//!
//! Each test starts its own process on free loopback ports with its own certificate, install
//! namespace and Knative namespace, so tests can differ in settings and run in parallel.
//!
//! The dormancy controller is off unless a test asks for it (`--controller=true`), and a test
//! that runs it also passes `--org-selector s2z.dev/test=<id>`: a controller without a selector
//! would reconcile every other test's orgs on the shared plane.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::env::eventually;
use crate::plane::{Plane, repo_root};
use crate::tls::TestCert;

/// How long a freshly started webhook gets to sync its caches. Bounds a broken run only.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The webhook binary: `$S2Z_WEBHOOK_BIN`, else `target/debug/s2z-webhook` (built by
/// `cargo build -p s2z-webhook`, which `make test` runs first).
pub fn webhook_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("S2Z_WEBHOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/s2z-webhook"));
    ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p s2z-webhook` first (make test does)",
        bin.display()
    );
    Ok(bin)
}

/// A free TCP port on 127.0.0.1. Another process may take it before ours binds it; [`start`]
/// retries when that happens.
///
/// [`start`]: WebhookProcess::start
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running `s2z-webhook`. Dropping it kills the process.
pub struct WebhookProcess {
    child: Option<Child>,
    /// The TLS port (`/mutate`).
    pub tls_port: u16,
    /// The plain port (`/healthz`, `/readyz`, `/metrics`).
    pub metrics_port: u16,
    /// The certificate it serves, for the webhook configuration's `caBundle`.
    pub cert: TestCert,
    /// Holds the certificate files and the log.
    dir: tempfile::TempDir,
    /// The kubeconfig the process uses.
    kubeconfig: PathBuf,
    /// The flags after the TLS and port flags.
    args: Vec<String>,
    /// How many times the process was started (each start appends to the log).
    starts: u32,
}

impl WebhookProcess {
    /// Starts the webhook with the admin kubeconfig, a fresh certificate, free ports and
    /// `args` (e.g. `--namespace`, `--knative-namespace`), then waits until `/readyz` answers
    /// 200, i.e. every cache has synced. The controller is off unless `args` say
    /// `--controller=true`.
    pub async fn start(plane: &Plane, args: &[&str]) -> Result<Self> {
        Self::start_with(&plane.admin_kubeconfig, args).await
    }

    /// Like [`start`](Self::start), with another kubeconfig, e.g. one that reaches the API
    /// server through a proxy the test can cut.
    pub async fn start_with(kubeconfig: &Path, args: &[&str]) -> Result<Self> {
        let cert = TestCert::localhost()?;
        let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_file, &cert.cert_pem).context("failed to write tls.crt")?;
        std::fs::write(&key_file, &cert.key_pem).context("failed to write tls.key")?;
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--controller")) {
            args.push("--controller=false".into());
        }
        let mut process = Self {
            child: None,
            tls_port: 0,
            metrics_port: 0,
            cert,
            dir,
            kubeconfig: kubeconfig.to_path_buf(),
            args,
            starts: 0,
        };
        // A port found free can be taken before the webhook binds it: try again on new ports.
        for _attempt in 0..3 {
            process.tls_port = free_port()?;
            process.metrics_port = free_port()?;
            process.spawn()?;
            match process.wait_ready().await {
                Ok(()) => return Ok(process),
                Err(e) if process.logs().contains("failed to listen on") => {
                    process.kill();
                    eprintln!("webhook lost a port race, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        bail!(
            "failed to start the webhook on free ports: {}",
            process.logs()
        )
    }

    /// Starts the process on the current ports, appending to the log.
    fn spawn(&mut self) -> Result<()> {
        let bin = webhook_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("failed to open the webhook log")?;
        self.starts += 1;
        let child = Command::new(&bin)
            .arg(format!("--tls-addr=127.0.0.1:{}", self.tls_port))
            .arg(format!("--metrics-addr=127.0.0.1:{}", self.metrics_port))
            .arg(format!(
                "--tls-cert-file={}",
                self.dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key-file={}",
                self.dir.path().join("tls.key").display()
            ))
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,s2z_webhook=debug")
            .env_remove("S2Z_NAMESPACE")
            .env_remove("S2Z_KNATIVE_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share the webhook log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process again, on the same ports and with the same flags (a registered
    /// webhook URL stays valid), and waits until it is ready. Kills it first if it runs.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit (it drains requests and
    /// flushes pending activity first); kills it if it does not.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("the webhook was stopped");
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("failed to run kill")?;
        ensure!(sent.success(), "kill -TERM {pid} failed");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("failed to poll the webhook")? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > timeout {
                self.kill();
                bail!(
                    "the webhook did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for `/readyz` to answer 200, failing early (with the log) if the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.exit_status()? {
                bail!("the webhook exited with {status}:\n{}", self.logs());
            }
            let last = match self.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "timed out after {READY_TIMEOUT:?} waiting for the webhook's /readyz: {last}\nwebhook log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process has exited, and how.
    fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .context("failed to poll the webhook process"),
            None => bail!("the webhook was stopped"),
        }
    }

    /// The `https://127.0.0.1:PORT/mutate` URL to register.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.tls_port)
    }

    /// Where the process writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("webhook.log")
    }

    /// The log so far (for failure messages).
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            file.read_to_string(&mut text).ok();
        }
        text
    }

    /// `GET path` on the plain port: the status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// The sum of `s2z_webhook_admission_requests_total` over all outcomes and kinds: how many
    /// `/mutate` calls the process has answered.
    pub async fn admission_requests(&self) -> Result<u64> {
        let (status, text) = self.get("/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}: {text}");
        Ok(counter_sum(&text, "s2z_webhook_admission_requests_total"))
    }

    /// The value of one sample family in `/metrics`: the sum over samples of `name` whose labels
    /// include every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<u64> {
        let (status, text) = self.get("/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}: {text}");
        Ok(sample_sum(&text, name, labels))
    }

    /// `POST /v1/orgs/{org}/activity` on the TLS port, with `Authorization: Bearer <token>`
    /// when a token is given and `body` as the request body: the status code and body.
    pub async fn activity(
        &self,
        org: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<(u16, String)> {
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if let Some(token) = token {
            headers.push(("Authorization".to_string(), format!("Bearer {token}")));
        }
        https_request(
            &self.cert.cert_pem,
            self.tls_port,
            "POST",
            &format!("/v1/orgs/{org}/activity"),
            &headers,
            body.as_bytes(),
        )
        .await
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sums the samples of `name` whose label set includes every pair of `labels`.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

/// A one-shot HTTPS/1.1 request on 127.0.0.1:`port`, trusting only `ca_pem`: the status code
/// and body.
pub async fn https_request(
    ca_pem: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("failed to parse the CA")?)
            .context("failed to trust the CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("failed to select TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("failed to connect to 127.0.0.1:{port}"))?;
    let name = ServerName::try_from("127.0.0.1").context("failed to name the server")?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake failed")?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    // A server closing TLS without close_notify is not an error for a one-shot request.
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("failed to read the response in time")?;
    if let Err(e) = read
        && raw.is_empty()
    {
        return Err(e).context("failed to read the response");
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("failed to read the status line of {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Sums every sample of the counter `name` in a Prometheus text exposition.
pub fn counter_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A one-shot plain HTTP/1.1 GET on 127.0.0.1: enough for health and metrics endpoints, with
/// no client library to configure.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("failed to connect to 127.0.0.1:{port}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("failed to read the response in time")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("failed to read the status line of {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Registers (server-side apply, so idempotent) a MutatingWebhookConfiguration `name` that
/// sends Revision CREATEs in the namespaces matched by `namespace_selector` to `url`, with the
/// settings of manifests/base/mutatingwebhook.yaml: failurePolicy Ignore, 2 s timeout,
/// sideEffects None, reinvocationPolicy IfNeeded.
pub async fn register_mwc(
    client: &kube::Client,
    name: &str,
    url: &str,
    ca_bundle: &str,
    namespace_selector: Value,
) -> Result<()> {
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"s2z.dev/test-webhook": "true"}},
        "webhooks": [{
            "name": "revisions.s2z.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": url, "caBundle": ca_bundle},
            "rules": [{
                "apiGroups": ["serving.knative.dev"],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["revisions"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": namespace_selector,
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 2,
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("s2z-tests").force(),
            &Patch::Apply(&mwc),
        )
        .await
        .with_context(|| format!("failed to register MutatingWebhookConfiguration {name}"))?;
    Ok(())
}

/// Deletes a webhook configuration made by [`register_mwc`]; a missing one is fine.
pub async fn delete_mwc(client: &kube::Client, name: &str) -> Result<()> {
    match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to delete {name}")),
    }
}

/// Applies the Org CRD from manifests/base/crd.yaml (server-side apply, idempotent) and waits
/// until orgs are served.
pub async fn ensure_org_crd(client: &kube::Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = repo_root().join("manifests/base/crd.yaml");
    let crd = read_yaml::<CustomResourceDefinition>(&path)?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            "orgs.s2z.dev",
            &PatchParams::apply("s2z-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("failed to apply the Org CRD")?;
    let orgs: Api<s2z_core::org::Org> = Api::all(client.clone());
    eventually("orgs.s2z.dev served", READY_TIMEOUT, || async {
        Ok(orgs
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_counter_family() {
        let text = "# TYPE s2z_webhook_admission_requests counter\n\
            s2z_webhook_admission_requests_total{outcome=\"patched\",kind=\"pynode\"} 3\n\
            s2z_webhook_admission_requests_total{outcome=\"skipped\",kind=\"other\"} 2\n\
            s2z_webhook_admission_requests_total_other 9\n\
            s2z_webhook_admission_patches_total{kind=\"pynode\"} 3\n";
        assert_eq!(counter_sum(text, "s2z_webhook_admission_requests_total"), 5);
        assert_eq!(counter_sum("", "x"), 0);
    }

    #[test]
    fn sums_samples_with_labels() {
        let text = "s2z_webhook_activity_writes_total{result=\"written\"} 3\n\
            s2z_webhook_activity_writes_total{result=\"error\"} 2\n\
            s2z_webhook_controller_leader 1\n";
        let name = "s2z_webhook_activity_writes_total";
        assert_eq!(sample_sum(text, name, &[("result", "written")]), 3);
        assert_eq!(sample_sum(text, name, &[]), 5);
        assert_eq!(sample_sum(text, "s2z_webhook_controller_leader", &[]), 1);
        assert_eq!(sample_sum(text, name, &[("result", "nope")]), 0);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
