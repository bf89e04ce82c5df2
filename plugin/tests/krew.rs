//! The krew manifest stays in step with the crate: same version, the right binary, every
//! platform's archive named after that version.

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
