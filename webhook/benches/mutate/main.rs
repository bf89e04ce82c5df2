//! Benchmark of `POST /mutate` over TLS with keep-alive, against the production server
//! (`server::serve_tls` + `server::tls_router`, the real cert reloader and the real watch stores)
//! filled with 10,000 orgs and their namespaces instead of a cluster.
//!
//! - Baseline: `POST /noop` of the same server, in the same run: a webhook that reads the same
//!   AdmissionReview bytes and answers without looking at them. `GET /noop` (no body) is
//!   reported too, as the floor of TLS + HTTP.
//! - Open loop: requests are put on a fixed timetable (500, 2,000, 5,000 req/s) by a thread of
//!   their own and latency is measured from the *scheduled* send time, so a slow response
//!   delays no measurement (no coordinated omission).
//! - Closed loop: 16 keep-alive connections send back to back; the maximum req/s, in rounds
//!   (every endpoint in turn, 3 times), medians reported.
//! - Calibration: `POST /bench/busy/{5,10}` (bench-only) read the same reviews and spin 5 or
//!   10 µs before answering: what any handler that spends that much CPU costs in this harness,
//!   where the load generator shares the server's 2 cores.
//! - Resident memory (VmRSS) before and after the caches hold 10,000 orgs.
//!
//! Run: `make bench-webhook` (`cargo bench -p s2z-webhook --bench mutate -- [--duration 5]`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use s2z_webhook::cache::Caches;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod caches;
mod load;
mod report;
mod requests;
mod under_test;

use crate::caches::fill_caches;
use crate::load::{Connector, closed_loop, open_loop, send};
use crate::report::{Memory, Report, print_report};
use crate::requests::{Req, bodiless_noop, mutate_requests, same_bodies};
use crate::under_test::{serving_cert, start_server};

/// The s2z webhook benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Orgs (one namespace each) in the caches.
    #[arg(long, default_value_t = 10_000)]
    orgs: usize,
    /// Open-loop offered rates, req/s.
    #[arg(long, value_delimiter = ',', default_values_t = [500, 2000, 5000])]
    rates: Vec<u32>,
    /// Keep-alive connections of the open-loop runs (more than ever busy at once).
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    /// Keep-alive connections of the closed-loop run.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Worker threads of the server's runtime (the production default is one per core).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Log admissions as production does (JSON, level info: patched or warned admissions are
    /// logged, the others are at debug), into a sink; `false` to measure without logging.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log: bool,
    /// Only run `admission::review` in a loop for this many seconds, then exit: a target for
    /// `perf record`.
    #[arg(long, hide = true)]
    profile_review: Option<u64>,
    /// Closed-loop rounds: every endpoint in turn, this many times; medians are reported, so
    /// that a burst of other load on the machine skews one round, not the result.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calibration: closed-loop runs of a bench-only endpoint that reads the review and spins
    /// this many µs before answering, to show what any handler's CPU time costs in this harness.
    #[arg(long, value_delimiter = ',', default_values_t = [5, 10])]
    busy: Vec<u64>,
    /// Only measure endpoints whose name contains one of these (`GET`, `POST /noop`, `mutate`,
    /// `busy`), e.g. under `perf record`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.log {
        // Production logs every admission at info; measure that cost, not the terminal's.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .init();
    }
    let load_start = load_average();
    let rss_start = vm_rss_kib()?;
    let started = Instant::now();
    let caches = fill_caches(args.orgs)?;
    let fill_time = started.elapsed();
    let rss_filled = vm_rss_kib()?;
    if let Some(secs) = args.profile_review {
        let requests = mutate_requests(args.orgs);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0usize;
        while Instant::now() < deadline {
            review_cost(&caches, &requests)?;
            n += 1;
        }
        println!("{n} rounds of {} reviews", requests.len());
        return Ok(());
    }
    let review_cost = review_cost(&caches, &mutate_requests(args.orgs))?;

    let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
    let (cert_pem, tls) = serving_cert(dir.path())?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("server")
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let addr = server_rt.block_on(start_server(caches, tls, shutdown.clone()))?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let report = client_rt.block_on(run(&args, addr, &cert_pem))?;
    let rss_after = vm_rss_kib()?;
    let load_end = load_average();
    shutdown.cancel();
    drop(server_rt);

    print_report(
        &args,
        &report,
        Memory {
            start: rss_start,
            filled: rss_filled,
            after: rss_after,
            fill_time,
        },
        review_cost,
    );
    println!("load average (1 min) of the machine: {load_start} before, {load_end} after");
    Ok(())
}

/// The 1-minute load average, from /proc/loadavg: how much else ran on the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The CPU time of the admission decision alone, `admission::review` on one thread without
/// HTTP or TLS: what /mutate costs on top of /noop, at most. Counted in this thread's CPU
/// time, so that time the machine gave to other processes does not count.
fn review_cost(caches: &Caches, requests: &[Req]) -> Result<Duration> {
    let now = chrono::Utc::now();
    let rounds = 20;
    for req in requests {
        s2z_webhook::admission::review(&req.body, caches, now)?;
    }
    let started = thread_cpu()?;
    for _ in 0..rounds {
        for req in requests {
            std::hint::black_box(s2z_webhook::admission::review(&req.body, caches, now)?);
        }
    }
    let used = thread_cpu()?.saturating_sub(started);
    Ok(used / u32::try_from(rounds * requests.len()).unwrap_or(u32::MAX))
}

/// CPU time of the calling thread so far (/proc/thread-self/schedstat, first field).
fn thread_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("failed to read /proc/thread-self/schedstat")?;
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .context("failed to parse /proc/thread-self/schedstat")?;
    Ok(Duration::from_nanos(nanos))
}

/// Resident memory of this process, from /proc/self/status.
fn vm_rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("failed to find VmRSS in /proc/self/status")
}

/// Endpoint names of the report.
const GET_NOOP: &str = "GET /noop";
const POST_NOOP: &str = "POST /noop";
const MUTATE: &str = "POST /mutate";

async fn run(args: &Args, addr: SocketAddr, cert_pem: &str) -> Result<Report> {
    let connector = Connector::new(addr, cert_pem)?;
    let mutate = Arc::new(mutate_requests(args.orgs));
    let selected =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    // Measured open and closed loop: the baselines and /mutate.
    let endpoints: Vec<(&'static str, Arc<Vec<Req>>)> = [
        (GET_NOOP, Arc::new(bodiless_noop())),
        (POST_NOOP, Arc::new(same_bodies(&mutate, "/noop"))),
        (MUTATE, mutate.clone()),
    ]
    .into_iter()
    .filter(|(name, _)| selected(name))
    .collect();
    // Closed loop only: the calibration. A few names, leaked once: the report borrows them.
    let busy: Vec<(&'static str, Arc<Vec<Req>>)> = args
        .busy
        .iter()
        .map(|us| {
            let path: &'static str = Box::leak(format!("/bench/busy/{us}").into_boxed_str());
            let name: &'static str = Box::leak(format!("POST {path}").into_boxed_str());
            (name, Arc::new(same_bodies(&mutate, path)))
        })
        .filter(|(name, _)| selected(name))
        .collect();
    let checked = check_answers(&connector, &mutate).await?;
    let duration = Duration::from_secs(args.duration);

    // Warm up every path (allocator, caches, branch predictors), unmeasured.
    let warm = Duration::from_secs(1);
    for (endpoint, requests) in endpoints.iter().chain(&busy) {
        closed_loop(&connector, endpoint, requests, warm, args.connections).await?;
    }

    let mut runs = Vec::new();
    for &rate in &args.rates {
        for (endpoint, requests) in &endpoints {
            let run = open_loop(
                &connector,
                endpoint,
                requests,
                rate,
                duration,
                args.open_connections,
            )
            .await?;
            eprintln!(
                "  {endpoint:20} open {rate:>5}/s  p50 {:>6} µs  p99 {:>6} µs",
                run.latency.p50, run.latency.p99
            );
            runs.push(run);
        }
    }
    // Rounds, each endpoint in turn, so that every endpoint sees the same spread of machine load.
    let mut closed = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for (endpoint, requests) in endpoints.iter().chain(&busy) {
            let run =
                closed_loop(&connector, endpoint, requests, duration, args.connections).await?;
            eprintln!(
                "  {endpoint:20} closed {} conn, round {round}  {:.0} req/s",
                args.connections,
                run.throughput()
            );
            closed.push(run);
        }
    }
    Ok(Report {
        runs,
        closed,
        checked,
    })
}

/// Before measuring, checks that /mutate answers as it should: dormant orgs' revisions get a
/// patch, exempt orgs' do not.
async fn check_answers(connector: &Connector, mutate: &Arc<Vec<Req>>) -> Result<String> {
    let mut sender = connector.connect().await?;
    let (mut patched, mut unchanged) = (0, 0);
    for req in mutate.iter() {
        let body = send(&mut sender, req).await?;
        let review: Value = serde_json::from_slice(&body)?;
        ensure!(
            review["response"]["allowed"] == true,
            "not allowed: {review}"
        );
        // admission.k8s.io/v1 `patch` is []byte: a base64 string on the wire.
        if let Some(patch) = review["response"].get("patch") {
            ensure!(
                patch.is_string(),
                "the patch is not a base64 string: {review}"
            );
            patched += 1;
        } else {
            unchanged += 1;
        }
    }
    ensure!(
        patched > 0 && unchanged > 0,
        "expected both patched and unchanged answers, got {patched} patched and {unchanged} unchanged"
    );
    Ok(format!(
        "{patched} of {} distinct reviews patched, {unchanged} unchanged (exempt orgs)",
        mutate.len()
    ))
}
