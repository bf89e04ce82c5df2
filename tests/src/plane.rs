//! Finding, or starting, the local control plane, and running the real kubectl against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// What `s2z-cluster up` recorded in `<state-dir>/cluster.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plane {
    pub version: String,
    pub server: String,
    pub admin_kubeconfig: PathBuf,
    pub restricted_kubeconfig: PathBuf,
    pub ca_file: PathBuf,
    pub bin_dir: PathBuf,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub allow_zero_initial_scale: bool,
    /// Started with `up --knative`: the real Knative Serving webhook, controller and autoscaler
    /// run against this plane, with upstream's CRDs (see tests/knative).
    #[serde(default)]
    pub knative: bool,
    /// The Knative release, e.g. `knative-v1.23.0`, when `knative` is set.
    #[serde(default)]
    pub knative_release: Option<String>,
    /// Where Knative's activator takes requests from this host, e.g. `http://10.213.0.2:8012`,
    /// when `knative` is set (see [`crate::activator`]).
    #[serde(default, rename = "activatorURL")]
    pub activator_url: Option<String>,
    /// Started with `up --kserve`: KServe's controller manager and webhooks run too, with
    /// upstream's CRDs (see tests/kserve), so models are real InferenceServices.
    #[serde(default)]
    pub kserve: bool,
    /// The KServe module version, e.g. `v0.17.0`, when `kserve` is set.
    #[serde(default)]
    pub kserve_version: Option<String>,
}

/// The repository root, found from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn state_dir() -> PathBuf {
    std::env::var_os("S2Z_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".state").join("cluster"))
}

fn launcher() -> PathBuf {
    repo_root().join("tests/cluster/bin/s2z-cluster")
}

const HOW_TO_START: &str = "build and start the local control plane with `make cluster` \
(tests/cluster/build && tests/cluster/bin/s2z-cluster up), or run the whole suite with `make test`";

const HOW_TO_START_KNATIVE: &str = "build the local control plane, Knative and KServe with \
`tests/cluster/build && tests/knative/build && tests/kserve/build`; tests that need real Knative \
start their own plane with `s2z-cluster up --kserve --state-dir .state/knative`";

static PLANE: OnceLock<std::result::Result<Plane, String>> = OnceLock::new();
static KNATIVE_PLANE: OnceLock<std::result::Result<Plane, String>> = OnceLock::new();

/// The running plane, started with `s2z-cluster up` if none answers. A test that cannot get a
/// plane fails with a message saying how to start one; it never skips.
pub fn plane() -> Result<Plane> {
    PLANE
        .get_or_init(|| find_or_start(&state_dir(), &[]).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no local control plane: {e}\nhint: {HOW_TO_START}"))
}

/// The state directory of the plane with real Knative: `S2Z_KNATIVE_STATE_DIR`, else
/// `<repo>/.state/knative`. Separate from [`plane()`]'s, so that plane keeps its fixture CRDs.
fn knative_state_dir() -> PathBuf {
    std::env::var_os("S2Z_KNATIVE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".state").join("knative"))
}

/// A plane running the real Knative Serving webhook, controller, autoscaler and activator (built
/// from the knative.dev/serving module by tests/knative/build) and KServe's controller manager
/// (tests/kserve/build), started once with `s2z-cluster up --kserve` (which implies `--knative`)
/// on its own state directory if none answers there. Like [`plane()`], it fails with a hint
/// rather than skip. `make test` stops it at the end.
pub fn knative_plane() -> Result<Plane> {
    KNATIVE_PLANE
        .get_or_init(|| {
            let plane = find_or_start(&knative_state_dir(), &["--kserve"]);
            match plane {
                Ok(p) if !p.knative || !p.kserve => Err(format!(
                    "the plane under {} runs without Knative or KServe",
                    knative_state_dir().display()
                )),
                other => other.map_err(|e| format!("{e:#}")),
            }
        })
        .clone()
        .map_err(|e| {
            anyhow::anyhow!(
                "no local control plane with Knative: {e}\nhint: {HOW_TO_START_KNATIVE}"
            )
        })
}

fn find_or_start(dir: &Path, extra_args: &[&str]) -> Result<Plane> {
    let bin = launcher();
    if !bin.exists() {
        bail!("{} is not built", bin.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // Test binaries run as separate processes; the lock lets exactly one of them start the plane.
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("failed to create {}", lock_path.display()))?;
    fs2::FileExt::lock_exclusive(&lock).context("failed to lock the plane")?;
    // `up` is idempotent: it returns at once when a healthy plane is already recorded.
    let out = Command::new(&bin)
        .arg("up")
        .arg("--state-dir")
        .arg(dir)
        .args(extra_args)
        .output()
        .with_context(|| format!("failed to run {}", bin.display()))?;
    fs2::FileExt::unlock(&lock).ok();
    if !out.status.success() {
        bail!(
            "`s2z-cluster up` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("cluster.json");
    let raw = std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&raw).with_context(|| format!("failed to parse {}", path.display()))
}

/// Starts (or finds, as `up` is idempotent) a plane with real Knative (and, with `kserve`, real
/// KServe) under `dir` with `nodes` fake GPU nodes of `gpus_per_node`: for a bench program that
/// owns its plane.
pub fn knative_plane_at(dir: &Path, nodes: u32, gpus_per_node: u32, kserve: bool) -> Result<Plane> {
    let bin = launcher();
    let flag = if kserve { "--kserve" } else { "--knative" };
    let status = Command::new(&bin)
        .args(["up", flag, "--nodes", &nodes.to_string()])
        .args(["--gpus-per-node", &gpus_per_node.to_string(), "--state-dir"])
        .arg(dir)
        .status()
        .with_context(|| format!("failed to run {}", bin.display()))?;
    if !status.success() {
        bail!("s2z-cluster up {flag} failed");
    }
    let raw = std::fs::read(dir.join("cluster.json")).context("failed to read cluster.json")?;
    let plane: Plane = serde_json::from_slice(&raw).context("failed to parse cluster.json")?;
    if !plane.knative || plane.kserve != kserve {
        bail!(
            "the plane under {} runs with knative={} kserve={}: stop it, or pass another --state-dir",
            dir.display(),
            plane.knative,
            plane.kserve
        );
    }
    Ok(plane)
}

/// Stops the plane under `dir`, if any.
pub fn plane_down_at(dir: &Path) {
    let _ = Command::new(launcher())
        .args(["down", "--state-dir"])
        .arg(dir)
        .status();
}

/// A kube client with admin rights on the plane. Each test makes its own, because a client's
/// connections belong to the tokio runtime that made them.
pub async fn cluster() -> Result<(Plane, kube::Client)> {
    let plane = plane()?;
    let client = client_for(&plane.admin_kubeconfig).await?;
    Ok((plane, client))
}

/// Like [`cluster`], on the plane with real Knative ([`knative_plane`]).
pub async fn knative_cluster() -> Result<(Plane, kube::Client)> {
    let plane = knative_plane()?;
    let client = client_for(&plane.admin_kubeconfig).await?;
    Ok((plane, client))
}

/// A client for any kubeconfig file, e.g. the restricted identity's.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("failed to read {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("failed to load kubeconfig")?;
    kube::Client::try_from(config).context("failed to build a client")
}

/// Runs the real kubectl built by tests/cluster with the admin kubeconfig. `extra_path` is put
/// first on PATH, so plugins placed there are found the way kubectl finds them for a user.
pub fn kubectl(plane: &Plane, extra_path: &[&Path], args: &[&str]) -> Result<Output> {
    kubectl_as(plane, &plane.admin_kubeconfig, extra_path, args)
}

/// Like [`kubectl`], with another identity's kubeconfig.
pub fn kubectl_as(
    plane: &Plane,
    kubeconfig: &Path,
    extra_path: &[&Path],
    args: &[&str],
) -> Result<Output> {
    let mut path: Vec<PathBuf> = extra_path.iter().map(|p| p.to_path_buf()).collect();
    path.push(plane.bin_dir.clone());
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let joined = std::env::join_paths(path).context("failed to build PATH")?;
    Command::new(plane.bin_dir.join("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", joined)
        .env_remove("NO_COLOR")
        .output()
        .context("failed to run kubectl")
}
