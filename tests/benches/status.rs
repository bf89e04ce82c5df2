//! Benchmark of `kubectl s2z status -o json` against plain `kubectl get`s of the same objects,
//! side by side in one run, on a real control plane of its own (`s2z-cluster up --nodes 0` in a
//! temporary state dir, stopped at the end; the shared plane is never touched).
//!
//! The plane holds 2,000 orgs with a namespace of 5 revisions each (the dormancy bench's
//! population), org statuses about half Dormant, fake GPU nodes managed by KWOK, 1,000 running
//! revision pods (128 of them holding a GPU) and 200 pending ones, so every column of `status`
//! has something to count and the server-side pod filter something to drop.
//!
//! Both sides run through the real kubectl (tests/cluster/bin/kubectl): `kubectl s2z status -o
//! json` (kubectl finds the plugin on PATH), and the `kubectl get ... -o json` of each kind
//! status reads with the same selectors, both all at once (the fastest a script can do) and one
//! after another. After a warm-up (discovery cache, API server caches), rounds alternate the
//! order of the three; medians are reported, with the ratio s2z / kubectl (target <= 1.0). Each
//! output is checked against the population, so both sides provably read the same objects.
//!
//! Run: `make bench-status`, i.e. `cargo build --release -p kubectl-s2z && cargo bench -p
//! s2z-tests --bench status` (flags after `--`, see `--help`).

// The dormancy bench's activity client and write counter are not used here.
#[allow(dead_code)]
mod dormancy_support;
mod status_support;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use dormancy_support::{PrivatePlane, populate, quantile};
use s2z_tests::plane::repo_root;
use s2z_tests::webhook::ensure_org_crd;
use status_support::{
    Cost, Runner, Shape, check_gets, check_report, kubectl_gets, nodes, org_statuses, pods,
    s2z_status, settings,
};

/// The s2z status benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Orgs (one namespace each).
    #[arg(long, default_value_t = 2000)]
    orgs: usize,
    /// Revisions per org.
    #[arg(long, default_value_t = 5)]
    revisions: usize,
    /// Fake GPU nodes.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: usize,
    /// Running revision pods (the first nodes x gpus-per-node hold one GPU each).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Pending revision pods (filtered out server-side).
    #[arg(long, default_value_t = 200)]
    pending: usize,
    /// Timed rounds after the warm-up.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Untimed warm-up rounds.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The kubectl-s2z binary to put first on PATH [default: target/release/kubectl-s2z].
    #[arg(long, env = "S2Z_PLUGIN_BIN")]
    plugin: Option<PathBuf>,
    /// Reuse (and keep) a plane under this state dir instead of a temporary one.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// One side of the comparison.
struct Side {
    name: &'static str,
    commands: Vec<Vec<String>>,
    parallel: bool,
    costs: Vec<Cost>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_of(costs: &[Cost], f: impl Fn(&Cost) -> f64) -> f64 {
    let mut values: Vec<f64> = costs.iter().map(f).collect();
    values.sort_by(f64::total_cmp);
    quantile(&values, 0.5)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| repo_root().join("target/release/kubectl-s2z"));
    ensure!(
        plugin.is_file(),
        "{} is missing: build it with `cargo build --release -p kubectl-s2z`",
        plugin.display()
    );
    let plugin_dir = plugin.parent().context("plugin path has no directory")?;
    let shape = Shape {
        orgs: args.orgs,
        revisions_per_org: args.revisions,
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        running: args.pods,
        pending: args.pending,
    };

    let (temp, private) = PrivatePlane::for_bench(args.state_dir.as_deref())?;
    let plane = private.plane.clone();
    let client = s2z_tests::plane::client_for(&plane.admin_kubeconfig).await?;
    ensure_org_crd(&client).await?;
    settings(&client).await?;
    let populated = populate(&client, "status", args.orgs, args.revisions).await?;
    org_statuses(&client, args.orgs).await?;
    eprintln!(
        "created {} orgs and {} revisions in {populated:.1?}",
        args.orgs,
        args.orgs * args.revisions
    );
    nodes(&client, &shape).await?;
    let running_after = pods(&client, &shape).await?;
    eprintln!(
        "{} pods Running and {} Pending after {running_after:.1?}",
        args.pods, args.pending
    );

    // kubectl finds `kubectl-s2z` on PATH; its discovery cache lives under HOME, private to
    // this run so that the warm-up fills it for both sides alike.
    let home = temp.path().join("home");
    std::fs::create_dir_all(&home)?;
    let mut path: Vec<PathBuf> = vec![plugin_dir.to_path_buf(), plane.bin_dir.clone()];
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let server_pids: Vec<u32> = ["kube-apiserver", "etcd"]
        .iter()
        .filter_map(|c| pid_of(private.dir(), c))
        .collect();
    let runner = Runner {
        kubectl: plane.bin_dir.join("kubectl"),
        env: vec![
            (
                OsString::from("KUBECONFIG"),
                plane.admin_kubeconfig.clone().into_os_string(),
            ),
            (OsString::from("PATH"), std::env::join_paths(path)?),
            (OsString::from("HOME"), home.into_os_string()),
        ],
        server_pids,
    };
    let mut sides = [
        Side {
            name: "kubectl s2z status -o json",
            commands: s2z_status(),
            parallel: false,
            costs: Vec::new(),
        },
        Side {
            name: "kubectl get x5, all at once",
            commands: kubectl_gets(),
            parallel: true,
            costs: Vec::new(),
        },
        Side {
            name: "kubectl get x5, one after another",
            commands: kubectl_gets(),
            parallel: false,
            costs: Vec::new(),
        },
    ];
    for round in 0..args.warmup + args.rounds {
        let timed = round >= args.warmup;
        // Rotate the order so that no side always runs first (or after the same one).
        for k in 0..sides.len() {
            let side = &mut sides[(round + k) % 3];
            let (cost, outputs) = runner.run(&side.commands, side.parallel).await?;
            if side.commands.len() == 1 {
                check_report(&outputs[0], &shape)
            } else {
                check_gets(&outputs, &shape)
            }
            .with_context(|| format!("{} read something else", side.name))?;
            eprintln!(
                "{} {:>2}: {:<36} {:>8.1} ms wall, {:>7.0} ms client CPU, {:>7.0} ms server CPU, {:>10} bytes",
                if timed { "round" } else { "warm-up" },
                round,
                side.name,
                ms(cost.wall),
                ms(cost.client_cpu),
                ms(cost.server_cpu),
                cost.bytes
            );
            if timed {
                side.costs.push(cost);
            }
        }
    }

    let [s2z, parallel, sequential] = &sides;
    let wall = |side: &Side| median_of(&side.costs, |c| ms(c.wall));
    let ratios = |other: &Side| {
        let mut r: Vec<f64> = s2z
            .costs
            .iter()
            .zip(&other.costs)
            .map(|(a, b)| a.wall.as_secs_f64() / b.wall.as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        (quantile(&r, 0.5), r.first().copied(), r.last().copied())
    };
    println!("\n## kubectl s2z status benchmark\n");
    println!(
        "Private control plane (Kubernetes {}): {} orgs, {} revisions, {} running pods ({} GPUs held) and {} pending on {} KWOK nodes; {} rounds after {} warm-up, medians.\n",
        plane.version,
        args.orgs,
        args.orgs * args.revisions,
        args.pods,
        shape.gpus_held(),
        args.pending,
        args.nodes,
        args.rounds,
        args.warmup
    );
    println!("| | wall | client CPU | API server + etcd CPU | stdout |");
    println!("|---|---|---|---|---|");
    for side in &sides {
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MB |",
            side.name,
            wall(side),
            median_of(&side.costs, |c| ms(c.client_cpu)),
            median_of(&side.costs, |c| ms(c.server_cpu)),
            median_of(&side.costs, |c| c.bytes as f64) / 1e6
        );
    }
    println!();
    for other in [parallel, sequential] {
        let (median, min, max) = ratios(other);
        println!(
            "ratio s2z / ({}): {:.2} (median of per-round ratios {:.2}, range {:.2}-{:.2}); target <= 1.0: {}",
            other.name,
            wall(s2z) / wall(other),
            median,
            min.unwrap_or(f64::NAN),
            max.unwrap_or(f64::NAN),
            if wall(s2z) <= wall(other) {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    drop(private);
    Ok(())
}

/// A component's pid, as `s2z-cluster up` records it under the state dir.
fn pid_of(dir: &std::path::Path, component: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join("pids").join(format!("{component}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}
