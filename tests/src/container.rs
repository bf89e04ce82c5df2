//! The s2z-webhook image that `make image` writes, run as a real container: unpacked from its
//! OCI layout by umoci into a runtime bundle, and started by runc (both from Debian's packages)
//! with the security settings of manifests/base/deployment.yaml.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::plane::repo_root;

/// Where the Deployment mounts the serving certificate.
pub const TLS_DIR: &str = "/tls";
/// Where Kubernetes mounts a pod's ServiceAccount token, CA and namespace.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The user and group the image and the Deployment run as.
pub const NONROOT: u32 = 65532;

/// The OCI layout `make image` writes (`$S2Z_IMAGE_LAYOUT`, else target/image/oci) and the tag
/// of its image, the workspace version.
pub fn image() -> Result<(PathBuf, String)> {
    let layout = std::env::var_os("S2Z_IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/image/oci"));
    ensure!(
        layout.join("index.json").exists(),
        "{} holds no OCI image: run `make image` first (make test does)",
        layout.display()
    );
    Ok((layout, env!("CARGO_PKG_VERSION").to_string()))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("failed to run {program}: is it installed (scripts/ensure-packages)?")
    })?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory bind-mounted read-only into the container.
pub struct Mount<'a> {
    /// The host directory.
    pub source: &'a Path,
    /// Where it appears in the container.
    pub target: &'a str,
}

/// What to run: the image's entrypoint with `args`, `env` added to the image's, and `mounts`.
pub struct Spec<'a> {
    /// Arguments after the image's entrypoint.
    pub args: &'a [String],
    /// `NAME=value` pairs added to the image's environment.
    pub env: &'a [String],
    /// Read-only bind mounts (Secrets, the ServiceAccount token).
    pub mounts: &'a [Mount<'a>],
}

/// Unpacks the image into `dir/bundle` and writes its runtime config: the image's own user,
/// entrypoint and environment, with the Deployment's container settings on top: a read-only
/// root filesystem, every capability dropped, no privilege escalation, the mounts read-only.
/// The container shares the host's network namespace, where the local plane's API server
/// listens on 127.0.0.1, as a pod reaches its API server through the Service network.
pub fn bundle(layout: &Path, tag: &str, dir: &Path, spec: &Spec<'_>) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run(
        "umoci",
        &["unpack", "--image", &image, &bundle.to_string_lossy()],
    )?;
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).context("failed to read the bundle's config.json")?;
    let mut config: Value = serde_json::from_str(&text)?;
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    if let Some(args) = process["args"].as_array_mut() {
        args.extend(spec.args.iter().map(|a| json!(a)));
    }
    if let Some(env) = process["env"].as_array_mut() {
        env.extend(spec.env.iter().map(|e| json!(e)));
    }
    process["noNewPrivileges"] = json!(true);
    process["capabilities"] = json!({
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": [],
    });
    config["root"]["readonly"] = json!(true);
    if let Some(mounts) = config["mounts"].as_array_mut() {
        for m in spec.mounts {
            mounts.push(json!({
                "destination": m.target, "type": "bind", "source": m.source,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }));
        }
    }
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|n| n["type"] != "network");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}

/// A container started by runc; killed and deleted when dropped.
pub struct Container {
    /// runc's name for it.
    pub id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Container {
    /// Starts `bundle` as container `id`, its output going to `log`.
    pub fn start(id: &str, bundle: &Path, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).context("failed to create the container log")?;
        let child = Command::new("runc")
            .args(["run", "--bundle", &bundle.to_string_lossy(), id])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("failed to run runc: is it installed (scripts/ensure-packages)?")?;
        Ok(Self {
            id: id.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// What the container printed.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The host pid of the container's process, from `runc state`.
    pub fn pid(&self) -> Result<u32> {
        let state: Value = serde_json::from_str(&run("runc", &["state", &self.id])?)?;
        state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("runc state has no pid")
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("the container was already reaped"),
        }
    }

    /// Sends SIGTERM, as the kubelet does, and waits up to `grace` for the process to exit.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        run("runc", &["kill", &self.id, "TERM"])?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                self.child = None;
                return Ok(status);
            }
            ensure!(
                start.elapsed() < grace,
                "the container did not exit within {grace:?} of SIGTERM:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("runc")
                .args(["kill", &self.id, "KILL"])
                .output();
            let _ = child.wait();
        }
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// Reads `Name:\tvalue` lines of /proc/<pid>/status.
pub fn proc_status(pid: u32, name: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}
