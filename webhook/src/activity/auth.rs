//! Who may send activity: the bearer token is checked with a TokenReview, and the caller is
//! authorized with a SubjectAccessReview on the virtual resource `orgs/activity` (group
//! `s2z.dev`, verb `create`, name = the org), so RBAC decides, e.g. through the
//! `s2z-activity-sender` ClusterRole.
//!
//! Both answers are cached for a short time, negative ones included: a gateway sends many
//! signals with one token, and a misbehaving client must not turn into API server load. Tokens
//! are kept only as SHA-256 digests.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::metrics::ActivityMetrics;

/// The virtual resource's API group.
pub const GROUP: &str = "s2z.dev";
/// The virtual resource.
pub const RESOURCE: &str = "orgs";
/// Its subresource.
pub const SUBRESOURCE: &str = "activity";
/// The verb checked.
pub const VERB: &str = "create";

/// Most entries each cache holds; past it, expired entries go, then everything.
const MAX_ENTRIES: usize = 10_000;

/// Why a caller was turned away.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable token, or the API server does not accept it (HTTP 401).
    #[error("failed to authenticate: {0}")]
    Unauthenticated(String),
    /// The caller may not send activity for this org (HTTP 403).
    #[error("failed to authorize {user} to create orgs/activity for org {org}: {reason}")]
    Forbidden {
        /// Who asked.
        user: String,
        /// For which org.
        org: String,
        /// What the authorizer said.
        reason: String,
    },
    /// The API server could not be asked (HTTP 503).
    #[error("failed to {what}: {source}")]
    Unavailable {
        /// TokenReview or SubjectAccessReview.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// A token's digest: the cache key, so tokens are not kept in memory.
pub type TokenKey = [u8; 32];

/// Digests a token.
pub fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// A small TTL map.
#[derive(Debug)]
struct TtlCache<K, V> {
    ttl: Duration,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let (value, expires) = self.entries.get(key)?;
        (now < *expires).then(|| value.clone())
    }

    fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (value, now + self.ttl));
    }
}

/// Who the token belongs to.
pub type Identity = Arc<UserInfo>;

/// Checks tokens and permissions, with caches.
pub struct Authenticator {
    client: kube::Client,
    tokens: Mutex<TtlCache<TokenKey, Result<Identity, String>>>,
    access: Mutex<TtlCache<(TokenKey, String), Result<(), String>>>,
    metrics: ActivityMetrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator whose answers are reused for `ttl`.
    pub fn new(client: kube::Client, ttl: Duration, metrics: ActivityMetrics) -> Self {
        Self {
            client,
            tokens: Mutex::new(TtlCache::new(ttl)),
            access: Mutex::new(TtlCache::new(ttl)),
            metrics,
        }
    }

    /// Who holds `token`, by TokenReview.
    pub async fn authenticate(&self, key: TokenKey, token: &str) -> Result<Identity, AuthError> {
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now());
        self.metrics.auth_cache("token", cached.is_some());
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.review_token(token).await?;
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, answer.clone(), Instant::now());
                answer
            }
        };
        answer.map_err(AuthError::Unauthenticated)
    }

    async fn review_token(&self, token: &str) -> Result<Result<Identity, String>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Unavailable {
                what: "review the token (TokenReview)",
                source,
            })?;
        let status = reviewed.status.unwrap_or_default();
        Ok(match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(Arc::new(user)),
            _ => Err(status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the token is not valid".to_string())),
        })
    }

    /// Whether `user` may create `orgs/activity` for `org`, by SubjectAccessReview.
    pub async fn authorize(
        &self,
        key: TokenKey,
        user: &UserInfo,
        org: &str,
    ) -> Result<(), AuthError> {
        let cache_key = (key, org.to_string());
        let cached = self
            .access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key, Instant::now());
        self.metrics.auth_cache("access", cached.is_some());
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.review_access(user, org).await?;
                self.access
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(cache_key, answer.clone(), Instant::now());
                answer
            }
        };
        answer.map_err(|reason| AuthError::Forbidden {
            user: user.username.clone().unwrap_or_default(),
            org: org.to_string(),
            reason,
        })
    }

    async fn review_access(
        &self,
        user: &UserInfo,
        org: &str,
    ) -> Result<Result<(), String>, AuthError> {
        let review = SubjectAccessReview {
            spec: access_review_spec(user, org),
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Unavailable {
                what: "review access (SubjectAccessReview)",
                source,
            })?;
        let status = reviewed.status.unwrap_or_default();
        Ok(if status.allowed {
            Ok(())
        } else {
            Err(status
                .reason
                .filter(|r| !r.is_empty())
                .or(status.evaluation_error.filter(|e| !e.is_empty()))
                .unwrap_or_else(|| "no RBAC rule allows it".to_string()))
        })
    }
}

/// The SubjectAccessReview asking whether `user` may create `orgs/activity` named `org`.
pub fn access_review_spec(user: &UserInfo, org: &str) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: user.username.clone(),
        uid: user.uid.clone(),
        groups: user.groups.clone(),
        extra: user.extra.clone(),
        resource_attributes: Some(ResourceAttributes {
            group: Some(GROUP.into()),
            resource: Some(RESOURCE.into()),
            subresource: Some(SUBRESOURCE.into()),
            verb: Some(VERB.into()),
            name: Some(org.into()),
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_leniently() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn the_review_names_the_virtual_resource() {
        let user = UserInfo {
            username: Some("system:serviceaccount:gw:gateway".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            ..UserInfo::default()
        };
        let spec = access_review_spec(&user, "acme");
        let attrs = spec.resource_attributes.unwrap_or_default();
        assert_eq!(attrs.group.as_deref(), Some("s2z.dev"));
        assert_eq!(attrs.resource.as_deref(), Some("orgs"));
        assert_eq!(attrs.subresource.as_deref(), Some("activity"));
        assert_eq!(attrs.verb.as_deref(), Some("create"));
        assert_eq!(attrs.name.as_deref(), Some("acme"));
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:gw:gateway")
        );
        assert_eq!(spec.groups.map(|g| g.len()), Some(1));
    }

    #[test]
    fn ttl_cache_expires_and_stays_bounded() {
        let now = Instant::now();
        let mut cache = TtlCache::new(Duration::from_secs(30));
        cache.insert(1u32, "a", now);
        assert_eq!(cache.get(&1, now + Duration::from_secs(29)), Some("a"));
        assert_eq!(cache.get(&1, now + Duration::from_secs(30)), None);
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            cache.insert(i, "x", now);
        }
        assert!(cache.entries.len() <= MAX_ENTRIES);
    }

    #[test]
    fn token_keys_differ_and_are_stable() {
        assert_eq!(token_key("a"), token_key("a"));
        assert_ne!(token_key("a"), token_key("b"));
    }
}
