//! Checks that the generated YAML committed under `manifests/` matches the Rust types, so CI
//! fails when someone changes a type and forgets `make generate`.

use std::path::PathBuf;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/base")
}

/// Compares `rendered` with the committed file, or rewrites the file when
/// `S2Z_UPDATE_GENERATED=1` (what `make generate` sets).
fn check(file: &str, rendered: &str) {
    let path = manifests().join(file);
    if std::env::var_os("S2Z_UPDATE_GENERATED").is_some() {
        std::fs::write(&path, rendered).expect("write generated file");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "failed to read {}: {e}; run `make generate`",
            path.display()
        )
    });
    assert!(
        committed == rendered,
        "{} is stale: run `make generate` and commit the result",
        path.display()
    );
}

#[test]
fn generated_org_crd_is_current() {
    let yaml = crate::org::try_crd_yaml().expect("render the Org CRD");
    let header = "# Generated from core/src/org.rs by `make generate`. Do not edit by hand.\n";
    check("crd.yaml", &format!("{header}{yaml}"));
}
