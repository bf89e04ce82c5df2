//! The krew manifest stays in step with the crate (same version, the right binary, every
//! platform's archive named after that version), and the release artifacts of `make dist` with
//! the manifest they fill in.

#[test]
fn krew_manifest_matches_the_crate() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/krew/s2z.yaml");
    let manifest: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    assert_eq!(manifest["kind"].as_str(), Some("Plugin"));
    assert_eq!(manifest["metadata"]["name"].as_str(), Some("s2z"));
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["spec"]["version"].as_str(), Some(version.as_str()));
    let platforms = manifest["spec"]["platforms"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert_eq!(platforms.len(), 4);
    for platform in platforms {
        assert_eq!(platform["bin"].as_str(), Some("kubectl-s2z"));
        let uri = platform["uri"].as_str().unwrap_or_default();
        assert!(
            uri.contains(&format!("/{version}/kubectl-s2z_{version}_")),
            "{uri}"
        );
        let sha = platform["sha256"].as_str().unwrap_or_default();
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sha}"
        );
    }
    Ok(())
}

/// A directory removed when dropped (the plugin's tests have no tempfile dependency).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("s2z-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut std::process::Command) -> Result<String, Box<dyn std::error::Error>> {
    let out = cmd
        .output()
        .map_err(|e| format!("failed to run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The release artifacts of scripts/dist agree with each other: each platform of the filled
/// manifest names an archive next to it whose SHA-256 is the manifest's (and SHA256SUMS's), which
/// holds an executable `kubectl-s2z` and every file the manifest installs, and whose linux/amd64
/// binary runs. `make dist` points S2Z_DIST_DIR at dist/ (the release build); otherwise the test
/// packages the debug binary cargo built for it, stripped (200 MB of debug info would take the
/// compression 25 s), which exercises the same script in a few seconds.
#[test]
fn dist_manifest_matches_the_archives() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let scratch = TempDir::new("dist")?;
    let dist = match std::env::var_os("S2Z_DIST_DIR") {
        Some(dir) => root.join(dir),
        None => {
            let bin = scratch.0.join("kubectl-s2z");
            run(std::process::Command::new("strip")
                .arg("-o")
                .arg(&bin)
                .arg(env!("CARGO_BIN_EXE_kubectl-s2z")))?;
            let out = scratch.0.join("dist");
            run(std::process::Command::new(root.join("scripts/dist"))
                .arg("--bin")
                .arg(&bin)
                .arg("--out")
                .arg(&out)
                .current_dir(root))?;
            out
        }
    };
    let filled: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dist.join("s2z.yaml")).map_err(|e| {
            format!(
                "failed to read {}: {e}; run `make dist`",
                dist.join("s2z.yaml").display()
            )
        })?,
    )?;
    let source: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/krew/s2z.yaml"
    ))?)?;
    // Everything but the platforms is the source manifest's.
    for key in ["apiVersion", "kind", "metadata"] {
        assert_eq!(filled[key], source[key], "{key}");
    }
    for key in [
        "version",
        "homepage",
        "shortDescription",
        "description",
        "caveats",
    ] {
        assert_eq!(filled["spec"][key], source["spec"][key], "spec.{key}");
    }
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS"))?;
    let platforms = filled["spec"]["platforms"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert!(
        platforms
            .iter()
            .any(|p| p["selector"]["matchLabels"]["os"] == "linux"
                && p["selector"]["matchLabels"]["arch"] == "amd64"),
        "dist/s2z.yaml has no linux/amd64 platform"
    );
    // SHA256SUMS may list other release files (the webhook image); the plugin's are the manifest's.
    assert_eq!(
        sums.lines()
            .filter(|l| l.contains("  kubectl-s2z_"))
            .count(),
        platforms.len(),
        "SHA256SUMS and the manifest disagree on the number of plugin archives:\n{sums}"
    );
    let source_platforms = source["spec"]["platforms"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for platform in &platforms {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap_or_default(),
            labels["arch"].as_str().unwrap_or_default(),
        );
        let from_source = source_platforms
            .iter()
            .find(|p| p["selector"] == platform["selector"])
            .ok_or(format!(
                "{os}/{arch} is not a platform of plugin/krew/s2z.yaml"
            ))?;
        assert_eq!(platform["uri"], from_source["uri"], "{os}/{arch} uri");
        assert_eq!(platform["bin"], from_source["bin"], "{os}/{arch} bin");
        let uri = platform["uri"].as_str().unwrap_or_default();
        let name = uri.rsplit('/').next().unwrap_or_default();
        assert_eq!(
            name,
            format!(
                "kubectl-s2z_v{}_{os}_{arch}.tar.gz",
                env!("CARGO_PKG_VERSION")
            ),
            "the uri's file name"
        );
        let archive = dist.join(name);
        let digest = run(std::process::Command::new("sha256sum").arg(&archive))?;
        let digest = digest.split_whitespace().next().unwrap_or_default();
        assert_eq!(
            platform["sha256"].as_str(),
            Some(digest),
            "{os}/{arch}: the manifest's sha256 is not the digest of {}",
            archive.display()
        );
        assert!(
            sums.lines().any(|l| l == format!("{digest}  {name}")),
            "SHA256SUMS does not list {digest}  {name}:\n{sums}"
        );

        let unpacked = TempDir::new("archive")?;
        run(std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked.0))?;
        let bin = platform["bin"].as_str().unwrap_or_default();
        assert_eq!(bin, "kubectl-s2z");
        let exe = unpacked.0.join(bin);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&exe)?.permissions());
        assert_eq!(
            mode & 0o111,
            0o111,
            "{name}: {bin} is not executable ({mode:o})"
        );
        let files = platform["files"].as_sequence().cloned().unwrap_or_default();
        assert!(
            files.iter().any(|f| f["from"] == "kubectl-s2z"),
            "{os}/{arch}: files do not install kubectl-s2z"
        );
        let mut listed: Vec<String> = files
            .iter()
            .map(|f| f["from"].as_str().unwrap_or_default().to_string())
            .collect();
        for file in &listed {
            assert!(
                unpacked.0.join(file).is_file(),
                "{name} does not hold {file}, which the manifest installs"
            );
        }
        // And nothing the manifest would not install.
        let mut held: Vec<String> = std::fs::read_dir(&unpacked.0)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        held.sort();
        listed.sort();
        assert_eq!(
            held, listed,
            "{name}: archive entries against the manifest's files"
        );
        if (os, arch) == ("linux", "amd64")
            && cfg!(all(target_os = "linux", target_arch = "x86_64"))
        {
            let version = run(std::process::Command::new(&exe).arg("--version"))?;
            assert_eq!(
                version.trim(),
                format!("kubectl-s2z {}", env!("CARGO_PKG_VERSION"))
            );
        }
    }
    Ok(())
}
