//! Requests to a revision through Knative's real activator on the `--knative` plane, with the
//! headers an ingress would set, the way traffic reaches a revision at zero.
//!
//! The same from a shell: `curl -H 'Knative-Serving-Namespace: NS' -H 'Knative-Serving-Revision:
//! REV' "$(jq -r .activatorURL .state/knative/cluster.json)/"`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::Plane;

/// One answer, as the caller saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

/// Sends requests for one revision to the plane's activator.
#[derive(Clone)]
pub struct Activator {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Activator {
    /// The activator of a plane started with `--knative`.
    pub fn of(plane: &Plane) -> Result<Self> {
        let Some(base) = plane.activator_url.clone() else {
            bail!(
                "the plane records no activator URL: it was started without --knative, or by an \
                 older s2z-cluster (stop it with `s2z-cluster down` and start it again)"
            );
        };
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { base, client })
    }

    /// One GET of `path` (e.g. `/` or `/?sleep=5s`) for `namespace/revision`. The activator
    /// holds it while the revision scales from zero, so the timeout covers a cold start.
    pub async fn get(
        &self,
        namespace: &str,
        revision: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Reply> {
        let uri = format!("{}{}", self.base, path);
        let req = hyper::Request::get(&uri)
            // What an ingress sets for the activator (pkg/activator: RevisionHeaderName/Namespace).
            .header("Knative-Serving-Namespace", namespace)
            .header("Knative-Serving-Revision", revision)
            .header("Host", format!("{revision}.{namespace}.example.com"))
            .body(Empty::<Bytes>::new())
            .context("failed to build the request")?;
        let start = Instant::now();
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .with_context(|| {
                format!(
                    "no answer from the activator for {namespace}/{revision} within {timeout:?}"
                )
            })?
            .with_context(|| format!("failed to send a request to the activator at {uri}"))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .context("timed out reading the activator's answer")?
            .context("failed to read the activator's answer")?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: start.elapsed(),
        })
    }

    /// `n` GETs of `path`, `concurrency` at a time; every reply, in completion order.
    pub async fn get_many(
        &self,
        namespace: &str,
        revision: &str,
        path: &str,
        n: usize,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<Vec<Reply>> {
        stream::iter(0..n)
            .map(|_| self.get(namespace, revision, path, timeout))
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }
}
