//! The load generator: TLS connections, the open and closed loops, and what each run measured
//! (latencies, the server threads' CPU time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::body::{Body, Bytes};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_rustls::TlsConnector;

use crate::requests::Req;

/// Connections to the server: TCP, TLS (trusting the test cert) and an HTTP/1.1 handshake.
pub(crate) struct Connector {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: TlsConnector,
}

impl Connector {
    pub(crate) fn new(addr: SocketAddr, cert_pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    pub(crate) async fn connect(&self) -> Result<SendRequest<Body>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = self
            .tls
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("failed the HTTP/1.1 handshake")?;
        tokio::spawn(connection);
        Ok(sender)
    }

    pub(crate) async fn connect_many(&self, n: usize) -> Result<Vec<SendRequest<Body>>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.connect().await?);
        }
        Ok(all)
    }
}

/// Sends one request and reads the whole response; `Err` on a transport error or non-200.
pub(crate) async fn send(sender: &mut SendRequest<Body>, req: &Req) -> Result<Bytes> {
    sender.ready().await?;
    let response = sender.send_request(req.build()?).await?;
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await?;
    ensure!(status == 200, "{} answered {status}", req.path);
    Ok(body)
}

/// CPU time and run-queue wait of the server's runtime threads (named `server`), from
/// /proc/self/task/*/schedstat. CPU per request does not depend on what else runs on the
/// machine; the wait shows how much the machine's other load delayed the server.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sched {
    pub(crate) cpu: Duration,
    pub(crate) wait: Duration,
}

impl Sched {
    pub(crate) fn server() -> Result<Self> {
        let mut total = Self::default();
        for task in std::fs::read_dir("/proc/self/task").context("failed to list threads")? {
            let dir = task?.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue; // the thread ended
            };
            if comm.trim() != "server" {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
                continue;
            };
            let mut fields = stat
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            total.cpu += Duration::from_nanos(fields.next().unwrap_or(0));
            total.wait += Duration::from_nanos(fields.next().unwrap_or(0));
        }
        Ok(total)
    }

    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(before.cpu),
            wait: self.wait.saturating_sub(before.wait),
        }
    }
}

/// Latencies of one run, in microseconds.
#[derive(Default)]
pub(crate) struct Samples {
    /// From the scheduled send time (open loop) or the send (closed loop) to the response.
    pub(crate) latency: Vec<u32>,
    /// From the actual send to the response.
    pub(crate) service: Vec<u32>,
    /// When each request was due, from the start of the run (for `--dump`).
    pub(crate) due: Vec<u32>,
    pub(crate) errors: u64,
}

impl Samples {
    pub(crate) fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.due.extend(other.due);
        self.errors += other.errors;
    }
}

pub(crate) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The result of one run.
pub(crate) struct Run {
    pub(crate) endpoint: &'static str,
    pub(crate) mode: String,
    pub(crate) completed: usize,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Percentiles,
    pub(crate) service: Percentiles,
    pub(crate) server: Sched,
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: u32,
    pub(crate) p90: u32,
    pub(crate) p99: u32,
    pub(crate) p999: u32,
    pub(crate) max: u32,
}

impl Percentiles {
    pub(crate) fn of(mut v: Vec<u32>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }
}

impl Run {
    pub(crate) fn new(
        endpoint: &'static str,
        mode: String,
        samples: Samples,
        elapsed: Duration,
        server: Sched,
    ) -> Self {
        Self {
            endpoint,
            mode,
            completed: samples.latency.len(),
            errors: samples.errors,
            elapsed,
            latency: Percentiles::of(samples.latency),
            service: Percentiles::of(samples.service),
            server,
        }
    }

    /// Server CPU per request, µs.
    pub(crate) fn cpu_per_request(&self) -> f64 {
        self.server.cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    /// Server run-queue wait per request, µs.
    pub(crate) fn wait_per_request(&self) -> f64 {
        self.server.wait.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Open loop: a thread of its own puts `rate * duration` requests on a fixed timetable;
/// `connections` workers take them in order. Latency counts from the scheduled time, so a
/// request that waits for a free connection or a slow server is measured as late as it is.
pub(crate) async fn open_loop(
    connector: &Connector,
    endpoint: &'static str,
    requests: &Arc<Vec<Req>>,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Result<Run> {
    let senders = connector.connect_many(connections).await?;
    let sched = Sched::server()?;
    let total = (u64::from(rate) * duration.as_secs()) as usize;
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let mut workers = Vec::new();
    for mut sender in senders {
        let (rx, requests) = (rx.clone(), requests.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, scheduled)) = next else { break };
                let sent = Instant::now();
                let req = &requests[n % requests.len()];
                match send(&mut sender, req).await {
                    Ok(_) => {
                        let done = Instant::now();
                        samples.latency.push(micros(done - scheduled));
                        samples.service.push(micros(done - sent));
                        samples
                            .due
                            .push(micros(scheduled.saturating_duration_since(start)));
                    }
                    Err(_) => samples.errors += 1,
                }
            }
            samples
        }));
    }
    // A blocking thread sleeps far more precisely than the runtime's 1 ms timer wheel.
    let schedule = std::thread::spawn(move || {
        for n in 0..total {
            let at = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((n, at)).is_err() {
                break;
            }
        }
    });
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await?);
    }
    let elapsed = start.elapsed();
    if schedule.join().is_err() {
        bail!("the scheduling thread panicked");
    }
    if let Some(dir) = std::env::var_os("S2Z_BENCH_DUMP") {
        dump(&std::path::PathBuf::from(dir), endpoint, rate, &samples)?;
    }
    let server = Sched::server()?.since(sched);
    Ok(Run::new(
        endpoint,
        format!("open {rate}/s"),
        samples,
        elapsed,
        server,
    ))
}

/// Writes one open-loop run's samples as CSV (`due_us,latency_us,service_us`), to see when
/// the slow requests happened: `S2Z_BENCH_DUMP=<dir>`.
pub(crate) fn dump(
    dir: &std::path::Path,
    endpoint: &str,
    rate: u32,
    samples: &Samples,
) -> Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("due_us,latency_us,service_us\n");
    for ((due, latency), service) in samples
        .due
        .iter()
        .zip(&samples.latency)
        .zip(&samples.service)
    {
        writeln!(csv, "{due},{latency},{service}")?;
    }
    let slug: String = endpoint
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("{slug}-{rate}.csv");
    std::fs::write(dir.join(&name), csv).with_context(|| format!("failed to write {name}"))?;
    Ok(())
}

/// Closed loop: `connections` workers send back to back for `duration`.
pub(crate) async fn closed_loop(
    connector: &Connector,
    endpoint: &'static str,
    requests: &Arc<Vec<Req>>,
    duration: Duration,
    connections: usize,
) -> Result<Run> {
    let senders = connector.connect_many(connections).await?;
    let sched = Sched::server()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for (w, mut sender) in senders.into_iter().enumerate() {
        let requests = requests.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut n = w;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match send(&mut sender, &requests[n % requests.len()]).await {
                    Ok(_) => {
                        let took = micros(sent.elapsed());
                        samples.latency.push(took);
                        samples.service.push(took);
                    }
                    Err(_) => samples.errors += 1,
                }
                n += connections;
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await?);
    }
    let elapsed = start.elapsed();
    let server = Sched::server()?.since(sched);
    Ok(Run::new(
        endpoint,
        format!("closed {connections} conn"),
        samples,
        elapsed,
        server,
    ))
}
