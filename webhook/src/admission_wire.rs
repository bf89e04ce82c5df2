//! The AdmissionReview wire format, read and written without generic JSON trees.
//!
//! A request is parsed once, straight from the body into small structs that borrow its strings
//! and hold only what the decision reads; everything else (the object's spec, `oldObject`,
//! `userInfo`, `options`) is skipped without being built. Only when that strict parse fails does
//! [`parse`] read the body again, as a `serde_json::Value`, to tell which error it is (not JSON,
//! not a review, no uid, malformed) or that only the object is unreadable, which is no error.
//! Errors are rare; the common path stays cheap.
//!
//! The response is serialized from borrowed fields, its patch as a base64 string: `patch` is a
//! `[]byte` in admission.k8s.io/v1, and Go's encoding/json writes and reads `[]byte` as base64.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use json_patch::PatchOperation;
use kube::core::admission::{META_API_VERSION_V1, META_KIND, Operation};
use s2z_core::annotations;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a body is not an AdmissionReview we can answer. The caller answers HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON at all.
    #[error("failed to read AdmissionReview: body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not an `admission.k8s.io/v1` `AdmissionReview`.
    #[error(
        "failed to read AdmissionReview: expected apiVersion {META_API_VERSION_V1:?} and kind {META_KIND:?}, got {api_version:?} and {kind:?}"
    )]
    NotAdmissionReview {
        /// The apiVersion found.
        api_version: String,
        /// The kind found.
        kind: String,
    },
    /// The review carries no request.
    #[error("failed to read AdmissionReview: it has no request")]
    NoRequest,
    /// The request has no (or an empty) uid, so no response can be matched to it.
    #[error("failed to read AdmissionReview: the request has no uid")]
    NoUid,
    /// The request does not have the shape of an AdmissionRequest.
    #[error("failed to read AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The patch could not be serialized (never expected).
    #[error("failed to encode the patch: {0}")]
    EncodePatch(#[source] serde_json::Error),
    /// The response could not be serialized (never expected).
    #[error("failed to encode AdmissionReview response: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A JSON string, borrowed from the body unless it contains escapes.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub(super) struct Str<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Str<'_> {
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by `Str` be searched with a `&str`; `Ord` of both is that of the text.
impl Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The top level of an AdmissionReview. Unknown fields (`response`) are ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

/// The fields of an AdmissionRequest the webhook reads, plus the ones every request must have
/// (`resource`, `userInfo`), checked as kube-core's `AdmissionRequest` checks them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Request<'a> {
    /// Missing or empty: answered with [`ReviewError::NoUid`].
    #[serde(borrow, default)]
    pub uid: Str<'a>,
    #[serde(borrow)]
    pub kind: GroupVersionKind<'a>,
    #[serde(rename = "resource", borrow)]
    _resource: GroupVersionResource<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    pub operation: Operation,
    #[serde(rename = "userInfo")]
    _user_info: IgnoredAny,
    /// Only set by the strict parse: [`parse`] returns the object on its own.
    #[serde(borrow, default)]
    object: Option<Object<'a>>,
}

/// `group`, `version` and `kind`, all required.
#[derive(Debug, Deserialize)]
pub(super) struct GroupVersionKind<'a> {
    #[serde(borrow)]
    pub group: Str<'a>,
    #[serde(rename = "version", borrow)]
    _version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
}

/// `group`, `version` and `resource`, all required, none read.
#[derive(Debug, Deserialize)]
struct GroupVersionResource<'a> {
    #[serde(rename = "group", borrow)]
    _group: Str<'a>,
    #[serde(rename = "version", borrow)]
    _version: Str<'a>,
    #[serde(rename = "resource", borrow)]
    _resource: Str<'a>,
}

/// The admitted object: its metadata, of which only what the decision reads.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Object<'a> {
    #[serde(borrow, default)]
    pub metadata: Metadata<'a>,
}

/// `metadata.namespace`, `labels` (strings, borrowed) and of the `annotations` only those the
/// decision reads ([`annotations::is_decision_input`]), owned: the decision takes a
/// `BTreeMap<String, String>`. A revision carries a dozen annotations and s2z reads two or three;
/// the rest would be copied, and copied again by the decision, for nothing. `Some(empty)` still
/// says the object has an annotations map, which decides the shape of the patch.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Metadata<'a> {
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub labels: Option<BTreeMap<Str<'a>, Str<'a>>>,
    #[serde(default, deserialize_with = "decision_inputs")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Reads `metadata.annotations` (a map of strings, or null), keeping the decision's inputs.
fn decision_inputs<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Inputs;

    impl<'de> Visitor<'de> for Inputs {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<Str<'de>, Str<'de>>()? {
                if annotations::is_decision_input(key.as_str()) {
                    kept.insert(key.0.into_owned(), value.0.into_owned());
                }
            }
            Ok(kept)
        }
    }

    struct Nullable;

    impl<'de> Visitor<'de> for Nullable {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Inputs).map(Some)
        }
    }

    deserializer.deserialize_option(Nullable)
}

/// A review read by [`parse`].
#[derive(Debug)]
pub(super) struct Parsed<'a> {
    /// The request (its `object` taken out).
    pub request: Request<'a>,
    /// The object, or why it could not be read.
    pub object: Result<Option<Object<'a>>, String>,
}

/// Parses the review envelope strictly and the object leniently: a review we cannot answer is
/// an error, an object we cannot read is only a reason to leave it alone.
pub(super) fn parse(body: &[u8]) -> Result<Parsed<'_>, ReviewError> {
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(body) else {
        return parse_slowly(body);
    };
    let (api_version, kind) = (
        envelope.api_version.as_ref().map_or("", Str::as_str),
        envelope.kind.as_ref().map_or("", Str::as_str),
    );
    if api_version != META_API_VERSION_V1 || kind != META_KIND {
        return Err(not_a_review(api_version, kind));
    }
    let Some(mut request) = envelope.request else {
        return Err(ReviewError::NoRequest);
    };
    if request.uid.as_str().is_empty() {
        return Err(ReviewError::NoUid);
    }
    let object = request.object.take();
    Ok(Parsed {
        request,
        object: Ok(object),
    })
}

fn not_a_review(api_version: &str, kind: &str) -> ReviewError {
    ReviewError::NotAdmissionReview {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    }
}

/// The strict parse failed: finds out why, in the order the checks are documented, reading
/// the body as a `Value` first so that any JSON at all gets past the first check.
fn parse_slowly(body: &[u8]) -> Result<Parsed<'static>, ReviewError> {
    let mut value: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (field(&value, "apiVersion"), field(&value, "kind"));
    if api_version != META_API_VERSION_V1 || kind != META_KIND {
        return Err(not_a_review(&api_version, &kind));
    }
    let request = match value.get_mut("request") {
        Some(request @ Value::Object(_)) => request,
        _ => return Err(ReviewError::NoRequest),
    };
    if field(request, "uid").is_empty() {
        return Err(ReviewError::NoUid);
    }
    let object = request.get_mut("object").map(Value::take);
    let request = Request::deserialize(request.take()).map_err(ReviewError::Malformed)?;
    let object = match object {
        None | Some(Value::Null) => Ok(None),
        Some(object) => Object::deserialize(object)
            .map(Some)
            .map_err(|e| format!("failed to read the object: {e}")),
    };
    Ok(Parsed { request, object })
}

/// The response AdmissionReview.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    /// An empty status means success; kube-rs clients require the field, so it is written.
    status: Empty,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The JSON Patch, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
struct Empty {}

/// Serializes the response: allowed, with the patch when it has operations, and the warnings.
pub(super) fn encode(
    uid: &str,
    patch: &[PatchOperation],
    warnings: &[String],
) -> Result<Vec<u8>, ReviewError> {
    let patch = if patch.is_empty() {
        None
    } else {
        let json = serde_json::to_vec(patch).map_err(ReviewError::EncodePatch)?;
        Some(BASE64.encode(json))
    };
    let review = ResponseReview {
        api_version: META_API_VERSION_V1,
        kind: META_KIND,
        response: Response {
            uid,
            allowed: true,
            status: Empty {},
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings,
        },
    };
    let capacity = 192 + review.response.patch.as_ref().map_or(0, String::len);
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, &review).map_err(ReviewError::Encode)?;
    Ok(body)
}
