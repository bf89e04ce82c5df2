//! The report: medians over rounds, the table and the figures against the targets.

use std::time::Duration;

use crate::load::Run;
use crate::{Args, GET_NOOP, MUTATE, POST_NOOP};

pub(crate) struct Report {
    /// Open-loop runs.
    pub(crate) runs: Vec<Run>,
    /// Closed-loop runs, every round.
    pub(crate) closed: Vec<Run>,
    pub(crate) checked: String,
}

impl Report {
    /// The closed-loop run of `endpoint` with the median throughput of the rounds.
    pub(crate) fn median_closed(&self, endpoint: &str) -> Option<&Run> {
        let mut runs: Vec<&Run> = self
            .closed
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .collect();
        runs.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        runs.get(runs.len() / 2).copied()
    }

    /// The median over rounds of `endpoint`'s throughput as a percentage of `baseline`'s in the
    /// same round.
    pub(crate) fn median_ratio(&self, endpoint: &str, baseline: &str) -> Option<f64> {
        let of = |name: &str| -> Vec<f64> {
            self.closed
                .iter()
                .filter(|r| r.endpoint == name)
                .map(Run::throughput)
                .collect()
        };
        let mut ratios: Vec<f64> = of(endpoint)
            .into_iter()
            .zip(of(baseline))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| 100.0 * a / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    }

    /// Every round's throughput of `endpoint`, for the report.
    pub(crate) fn rounds(&self, endpoint: &str) -> String {
        self.closed
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| format!("{:.0}", r.throughput()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resident memory (KiB) before and after the caches are filled, and after the load.
pub(crate) struct Memory {
    pub(crate) start: u64,
    pub(crate) filled: u64,
    pub(crate) after: u64,
    pub(crate) fill_time: Duration,
}

pub(crate) fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

pub(crate) fn print_report(args: &Args, report: &Report, memory: Memory, review_cost: Duration) {
    println!();
    println!(
        "s2z-webhook /mutate benchmark: TLS 1.3, HTTP/1.1 keep-alive, {} orgs cached, server {} worker threads, {} s per run, {} closed-loop rounds, logging {}",
        args.orgs,
        args.server_threads,
        args.duration,
        args.rounds,
        if args.log {
            "on (JSON at info, sink)"
        } else {
            "off"
        }
    );
    println!("answers: {}", report.checked);
    println!(
        "admission::review() alone, one thread, no HTTP/TLS: {:.1} µs CPU per review",
        review_cost.as_secs_f64() * 1e6
    );
    println!();
    println!(
        "| endpoint             | load                  | done   | err | req/s   | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 service ms | srv CPU µs/req | srv wait µs/req |"
    );
    println!(
        "|----------------------|-----------------------|--------|-----|---------|--------|--------|--------|----------|--------|----------------|----------------|-----------------|"
    );
    let mut names: Vec<&str> = Vec::new();
    for run in &report.closed {
        if !names.contains(&run.endpoint) {
            names.push(run.endpoint);
        }
    }
    let medians = names.iter().filter_map(|name| report.median_closed(name));
    for run in report.runs.iter().chain(medians) {
        let mode = if run.mode.starts_with("closed") {
            format!("{} (median)", run.mode)
        } else {
            run.mode.clone()
        };
        println!(
            "| {:20} | {:21} | {:>6} | {:>3} | {:>7.0} | {:>6} | {:>6} | {:>6} | {:>8} | {:>6} | {:>14} | {:>14.0} | {:>15.0} |",
            run.endpoint,
            mode,
            run.completed,
            run.errors,
            run.throughput(),
            ms(run.latency.p50),
            ms(run.latency.p90),
            ms(run.latency.p99),
            ms(run.latency.p999),
            ms(run.latency.max),
            ms(run.service.p99),
            run.cpu_per_request(),
            run.wait_per_request(),
        );
    }
    println!();
    println!(
        "max throughput, closed loop, {} connections, median of {} rounds (req/s of each round):",
        args.connections, args.rounds
    );
    for name in &names {
        let ratio = |baseline: &str| {
            report
                .median_ratio(name, baseline)
                .map_or("-".to_owned(), |r| format!("{r:.1}%"))
        };
        println!(
            "  {name:20} {:>7.0} req/s  = {:>6} of POST /noop, {:>6} of GET /noop   ({})",
            report.median_closed(name).map_or(0.0, Run::throughput),
            ratio(POST_NOOP),
            ratio(GET_NOOP),
            report.rounds(name),
        );
    }
    if let Some(ratio) = report.median_ratio(MUTATE, POST_NOOP) {
        println!(
            "target: /mutate >= 80% of the no-op webhook (POST /noop, same reviews): {ratio:.1}%"
        );
    }
    let cpu = |endpoint: &str| {
        report
            .median_closed(endpoint)
            .map_or(0.0, Run::cpu_per_request)
    };
    let (mutate_cpu, noop_cpu) = (cpu(MUTATE), cpu(POST_NOOP));
    println!(
        "server CPU per request (closed loop, median round): /mutate {mutate_cpu:.0} µs, POST /noop {noop_cpu:.0} µs: on 2 dedicated cores the server alone would top out near {:.0} and {:.0} req/s",
        2e6 / mutate_cpu.max(1.0),
        2e6 / noop_cpu.max(1.0),
    );
    let p99_at = |endpoint: &str, mode: &str| {
        report
            .runs
            .iter()
            .find(|r| r.endpoint == endpoint && r.mode == mode)
            .map(|r| ms(r.latency.p99))
    };
    if let Some(p99) = p99_at(MUTATE, "open 2000/s") {
        println!(
            "p99 at 2000 req/s: /mutate {p99} ms, POST /noop {} ms (target <= 2 ms)",
            p99_at(POST_NOOP, "open 2000/s").unwrap_or_else(|| "-".to_owned())
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "resident memory (VmRSS): {:.1} MiB before the caches, {:.1} MiB with {} orgs + {} namespaces cached (+{:.1} MiB, {:.2} KiB per org+namespace, filled in {:.2} s), {:.1} MiB after the load",
        mib(memory.start),
        mib(memory.filled),
        args.orgs,
        args.orgs,
        mib(memory.filled.saturating_sub(memory.start)),
        memory.filled.saturating_sub(memory.start) as f64 / args.orgs.max(1) as f64,
        memory.fill_time.as_secs_f64(),
        mib(memory.after),
    );
}
