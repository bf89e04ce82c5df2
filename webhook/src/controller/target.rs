//! Which object carries a revision's autoscaling annotations on this cluster's Knative: the
//! Revision on Knative >= 1.21, its PodAutoscaler (same name and namespace) on <= 1.20.
//!
//! From 1.21 the revision reconciler copies the Revision's autoscaling annotations onto the PA
//! and reverts direct PA edits; before, it never touched PA annotations and copied the
//! Revision's onto the pod template, so patching the Revision rolled every pod. Never the ksvc:
//! editing its template creates revisions and fights KServe.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, GroupVersionKind};
use s2z_core::labels::{KNATIVE_RELEASE_LABEL, KNATIVE_VERSION_LABEL};

/// A Knative Serving release, major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnativeVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
}

impl fmt::Display for KnativeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Text that names no Knative release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "failed to parse Knative version {0:?}: expected MAJOR.MINOR[.PATCH], optionally with a \"v\" or \"knative-v\" prefix, e.g. 1.21 or knative-v1.20.3"
)]
pub struct ParseVersionError(pub String);

impl FromStr for KnativeVersion {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseVersionError(s.to_string());
        let trimmed = s.trim();
        let bare = trimmed
            .strip_prefix("knative-")
            .unwrap_or(trimmed)
            .trim_start_matches(['v', 'V']);
        // Pre-release and build suffixes (1.21.0-rc.1) do not change which object to patch.
        let bare = bare.split(['-', '+']).next().unwrap_or_default();
        let mut parts = bare.split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some_and(|p| p.parse::<u64>().is_err()) {
            return Err(bad());
        }
        Ok(KnativeVersion { major, minor })
    }
}

/// The kind the controller patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `serving.knative.dev/v1` Revision (Knative >= 1.21).
    Revision,
    /// `autoscaling.internal.knative.dev/v1alpha1` PodAutoscaler (Knative <= 1.20).
    PodAutoscaler,
}

/// The first release whose revision reconciler propagates Revision annotations to the PA.
pub const REVISION_PROPAGATION: KnativeVersion = KnativeVersion {
    major: 1,
    minor: 21,
};

impl Target {
    /// The target for a release; an unknown release gets the current behaviour (Revision).
    pub fn for_version(version: Option<KnativeVersion>) -> Target {
        match version {
            Some(v) if v < REVISION_PROPAGATION => Target::PodAutoscaler,
            _ => Target::Revision,
        }
    }

    /// Lower-case kind name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Revision => "revision",
            Target::PodAutoscaler => "podautoscaler",
        }
    }
}

/// `serving.knative.dev/v1` Revision.
pub fn revision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// `autoscaling.internal.knative.dev/v1alpha1` PodAutoscaler.
pub fn autoscaler_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        "podautoscalers",
    )
}

/// Reads the release from the Knative namespace's labels (`app.kubernetes.io/version`, or the
/// older `serving.knative.dev/release`).
pub fn version_from_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<KnativeVersion> {
    [KNATIVE_VERSION_LABEL, KNATIVE_RELEASE_LABEL]
        .iter()
        .filter_map(|key| labels.get(*key))
        .find_map(|value| value.parse().ok())
}

/// Decides the target: the flag wins; else the Knative namespace's labels; else Revision.
/// Never fails: an unreadable namespace is logged and treated as an unknown release.
pub async fn detect(
    client: &kube::Client,
    knative_namespace: &str,
    flag: Option<KnativeVersion>,
) -> (Target, Option<KnativeVersion>) {
    if let Some(version) = flag {
        return (Target::for_version(Some(version)), Some(version));
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let version = match api.get_metadata_opt(knative_namespace).await {
        Ok(Some(ns)) => version_from_labels(&ns.metadata.labels.unwrap_or_default()),
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(namespace = knative_namespace, %error, "failed to read the Knative namespace; assuming Knative >= 1.21");
            None
        }
    };
    (Target::for_version(version), version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64) -> KnativeVersion {
        KnativeVersion { major, minor }
    }

    #[test]
    fn versions_parse_in_every_spelling() {
        for (text, want) in [
            ("1.21", v(1, 21)),
            ("v1.20.3", v(1, 20)),
            ("knative-v1.19.0", v(1, 19)),
            (" 1.22.0-rc.1 ", v(1, 22)),
            ("V2.0", v(2, 0)),
        ] {
            assert_eq!(text.parse::<KnativeVersion>(), Ok(want), "{text}");
        }
        for text in ["", "devel", "1", "1.x", "1.2.x", "latest"] {
            assert!(text.parse::<KnativeVersion>().is_err(), "{text}");
        }
    }

    #[test]
    fn old_releases_patch_the_autoscaler() {
        assert_eq!(Target::for_version(Some(v(1, 20))), Target::PodAutoscaler);
        assert_eq!(Target::for_version(Some(v(0, 26))), Target::PodAutoscaler);
        assert_eq!(Target::for_version(Some(v(1, 21))), Target::Revision);
        assert_eq!(Target::for_version(Some(v(2, 0))), Target::Revision);
        assert_eq!(Target::for_version(None), Target::Revision);
    }

    #[test]
    fn labels_name_the_release() {
        let labels = s2z_core::testing::map;
        assert_eq!(
            version_from_labels(&labels(&[(KNATIVE_VERSION_LABEL, "1.20.1")])),
            Some(v(1, 20))
        );
        assert_eq!(
            version_from_labels(&labels(&[(KNATIVE_RELEASE_LABEL, "v1.18.0")])),
            Some(v(1, 18))
        );
        assert_eq!(
            version_from_labels(&labels(&[
                (KNATIVE_VERSION_LABEL, "devel"),
                (KNATIVE_RELEASE_LABEL, "v1.19.0")
            ])),
            Some(v(1, 19))
        );
        assert_eq!(version_from_labels(&labels(&[])), None);
    }

    #[test]
    fn resources_have_upstream_names() {
        assert_eq!(revision_resource().api_version, "serving.knative.dev/v1");
        assert_eq!(autoscaler_resource().plural, "podautoscalers");
    }
}
