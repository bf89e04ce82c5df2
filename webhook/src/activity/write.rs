//! Writing `status.lastActivityAt` so that it never moves backwards, even with several replicas
//! writing the same org: a JSON patch whose first operation `test`s the value read (or, when
//! there is none yet, the resourceVersion), so the API server refuses the write if anything
//! changed since; the writer then re-reads and tries again, or stops when a newer timestamp is
//! already recorded.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{Api, Patch, PatchParams};
use s2z_core::activity::advances;
use s2z_core::org::Org;
use serde_json::{Value, json};

/// Field manager of activity writes.
pub const FIELD_MANAGER: &str = "s2z-activity";

/// Re-reads after refused writes before giving up for now (the caller retries later).
const MAX_ATTEMPTS: usize = 5;

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The timestamp is now `lastActivityAt`.
    Written,
    /// An equal or newer timestamp was already recorded.
    Stale,
    /// The org does not exist (any more).
    Gone,
}

/// Why a write did not happen; the caller keeps the activity and retries.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused or could not be reached.
    #[error("failed to record activity for org {org}: {source}")]
    Api {
        /// The org.
        org: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Other writers kept changing the org.
    #[error("failed to record activity for org {org}: the org changed under {attempts} attempts")]
    Contended {
        /// The org.
        org: String,
        /// Attempts made.
        attempts: usize,
    },
}

/// The text written: milliseconds, like every s2z timestamp.
pub fn text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The guarded JSON patch moving `org`'s `lastActivityAt` to `at`, or `None` when that would
/// not move it forward.
pub fn patch_for(org: &Org, at: DateTime<Utc>) -> Option<Value> {
    let status = org.status.as_ref();
    let current = status.and_then(|s| s.last_activity_at.as_deref());
    if !advances(current, at) {
        return None;
    }
    let value = Value::String(text(at));
    let rv = org.metadata.resource_version.clone().unwrap_or_default();
    Some(match (status, current) {
        (_, Some(current)) => json!([
            {"op": "test", "path": "/status/lastActivityAt", "value": current},
            {"op": "replace", "path": "/status/lastActivityAt", "value": value},
        ]),
        (Some(_), None) => json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/status/lastActivityAt", "value": value},
        ]),
        (None, None) => json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/status", "value": {"lastActivityAt": value}},
        ]),
    })
}

/// Whether the API server refused the patch because its `test` failed or the object changed.
fn refused(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 409 || e.code == 422)
}

/// Records `at` as `org`'s last activity unless a newer one is recorded. `cached` (the watch
/// cache's copy) saves a read on the first attempt; after a refusal the org is read afresh.
pub async fn record(
    api: &Api<Org>,
    org: &str,
    cached: Option<Arc<Org>>,
    at: DateTime<Utc>,
) -> Result<Recorded, WriteError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let api_error = |source| WriteError::Api {
        org: org.to_string(),
        source,
    };
    let mut current = cached;
    for _ in 0..MAX_ATTEMPTS {
        let object = match current.take() {
            Some(object) => object,
            None => match api.get_opt(org).await.map_err(api_error)? {
                Some(object) => Arc::new(object),
                None => return Ok(Recorded::Gone),
            },
        };
        let Some(ops) = patch_for(&object, at) else {
            return Ok(Recorded::Stale);
        };
        let patch: json_patch::Patch = match serde_json::from_value(ops) {
            Ok(patch) => patch,
            // The operations are built above from fixed shapes; this cannot fail, and if it
            // did, reading afresh is the safe reaction.
            Err(_) => continue,
        };
        match api
            .patch_status(org, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok(Recorded::Written),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Recorded::Gone),
            Err(e) if refused(&e) => {
                tracing::debug!(org, error = %e, "activity write refused; reading the org again");
            }
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(WriteError::Contended {
        org: org.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2z_core::org::{OrgSpec, OrgStatus};
    use s2z_core::testing::t;

    fn org(status: Option<OrgStatus>) -> Org {
        let mut org = Org::new("acme", OrgSpec::default());
        org.metadata.resource_version = Some("7".into());
        org.status = status;
        org
    }

    #[test]
    fn tests_the_value_it_replaces() {
        let o = org(Some(OrgStatus {
            last_activity_at: Some("2025-01-01T00:00:00Z".into()),
            ..OrgStatus::default()
        }));
        let ops = patch_for(&o, t("2025-01-01T00:00:01.5Z"));
        assert_eq!(
            ops,
            Some(json!([
                {"op": "test", "path": "/status/lastActivityAt", "value": "2025-01-01T00:00:00Z"},
                {"op": "replace", "path": "/status/lastActivityAt", "value": "2025-01-01T00:00:01.500Z"},
            ]))
        );
        assert_eq!(
            patch_for(&o, t("2025-01-01T00:00:00Z")),
            None,
            "never backwards"
        );
        assert_eq!(patch_for(&o, t("2024-12-31T00:00:00Z")), None);
    }

    #[test]
    fn without_a_value_it_tests_the_resource_version() {
        let ops = patch_for(&org(Some(OrgStatus::default())), t("2025-01-01T00:00:00Z"));
        assert_eq!(
            ops.as_ref().map(|o| o[0]["path"].clone()),
            Some(json!("/metadata/resourceVersion"))
        );
        assert_eq!(
            ops.as_ref().map(|o| o[1]["path"].clone()),
            Some(json!("/status/lastActivityAt"))
        );
        let ops = patch_for(&org(None), t("2025-01-01T00:00:00Z"));
        assert_eq!(
            ops.as_ref().map(|o| o[0]["value"].clone()),
            Some(json!("7"))
        );
        assert_eq!(
            ops.as_ref().map(|o| o[1]["value"].clone()),
            Some(json!({"lastActivityAt": "2025-01-01T00:00:00.000Z"}))
        );
        let parsed: Result<json_patch::Patch, _> = serde_json::from_value(ops.unwrap_or_default());
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
