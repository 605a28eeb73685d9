//! OCI error responses: one table of error → code → status → message, and the mapping from
//! engine errors. This is the only place where failures become HTTP statuses.

use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use berth_engine::{Error as EngineError, ParseError};

/// Every error the API can answer with. Each variant is one row of [`Kind::row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Blob not in the repository.
    BlobUnknown,
    /// Upload session in a bad state, or body failure.
    BlobUploadInvalid,
    /// Upload session being written by another request.
    BlobUploadBusy,
    /// Upload session not found.
    BlobUploadUnknown,
    /// Digest malformed or not matching content.
    DigestInvalid,
    /// Manifest references unknown content.
    ManifestBlobUnknown,
    /// Manifest malformed or unsupported.
    ManifestInvalid,
    /// Manifest larger than the limit.
    ManifestTooLarge,
    /// Manifest not found.
    ManifestUnknown,
    /// Repository name malformed.
    NameInvalid,
    /// Repository not known.
    NameUnknown,
    /// Tag malformed.
    TagInvalid,
    /// Content length disagrees with the declared length.
    SizeInvalid,
    /// Chunk range does not fit the upload.
    RangeInvalid,
    /// Requested byte range cannot be served.
    RangeNotSatisfiable,
    /// Pagination `n` malformed.
    PaginationNumberInvalid,
    /// Operation switched off or not supported.
    Unsupported,
    /// Method not allowed on this route.
    MethodNotAllowed,
    /// Route not found.
    NotFound,
    /// Too many requests.
    TooManyRequests,
    /// Too many failed logins from this client: wait (Retry-After).
    LoginThrottled,
    /// No or wrong credentials.
    Unauthorized,
    /// Authenticated but not allowed.
    Denied,
    /// A malformed token request.
    InvalidRequest,
    /// Storage is full.
    StorageFull,
    /// A storage service (the shared database, the object store) cannot answer now, or a blob
    /// is being deleted; the client may retry.
    Unavailable,
    /// A mirrored repository's upstream registry cannot answer now; the client may retry.
    UpstreamUnavailable,
    /// A mirrored repository's upstream registry refused the mirror's credentials or sent an
    /// answer the mirror cannot use.
    UpstreamFailed,
    /// Anything else; details are logged, not sent.
    Internal,
}

impl Kind {
    /// (code, status, message)
    pub fn row(self) -> (&'static str, StatusCode, &'static str) {
        use Kind::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND, "blob unknown to registry"),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST, "blob upload invalid"),
            BlobUploadBusy => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::CONFLICT,
                "another request is writing to this upload session; retry when it has finished",
            ),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                StatusCode::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST, "manifest invalid"),
            ManifestTooLarge => (
                "SIZE_INVALID",
                StatusCode::PAYLOAD_TOO_LARGE,
                "manifest is larger than 4 MiB",
            ),
            ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::NOT_FOUND,
                "manifest unknown to registry",
            ),
            NameInvalid => ("NAME_INVALID", StatusCode::BAD_REQUEST, "invalid repository name"),
            NameUnknown => (
                "NAME_UNKNOWN",
                StatusCode::NOT_FOUND,
                "repository name not known to registry",
            ),
            TagInvalid => ("TAG_INVALID", StatusCode::BAD_REQUEST, "invalid tag"),
            SizeInvalid => (
                "SIZE_INVALID",
                StatusCode::BAD_REQUEST,
                "provided length did not match content length",
            ),
            RangeInvalid => (
                "RANGE_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid content range",
            ),
            RangeNotSatisfiable => (
                "RANGE_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "requested range not satisfiable",
            ),
            PaginationNumberInvalid => (
                "PAGINATION_NUMBER_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid number of results requested",
            ),
            Unsupported => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            MethodNotAllowed => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            ),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND, "no such route in the registry API"),
            Unauthorized => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED, "authentication required"),
            InvalidRequest => ("INVALID_REQUEST", StatusCode::BAD_REQUEST, "invalid token request"),
            Denied => (
                "DENIED",
                StatusCode::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            TooManyRequests => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS, "too many requests"),
            LoginThrottled => (
                "TOOMANYREQUESTS",
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this client; wait Retry-After seconds before trying again",
            ),
            StorageFull => (
                "UNKNOWN",
                StatusCode::INSUFFICIENT_STORAGE,
                "the registry's storage is full",
            ),
            Unavailable => (
                "UNAVAILABLE",
                StatusCode::SERVICE_UNAVAILABLE,
                "the registry's storage cannot answer now; retry later",
            ),
            UpstreamUnavailable => (
                "UNAVAILABLE",
                StatusCode::SERVICE_UNAVAILABLE,
                "the upstream registry of this mirrored repository cannot answer now; retry later",
            ),
            UpstreamFailed => (
                "UNKNOWN",
                StatusCode::BAD_GATEWAY,
                "the upstream registry of this mirrored repository refused the mirror or answered wrongly",
            ),
            Internal => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
        }
    }
}

/// An error response: a row of the table, optional detail and extra headers.
#[derive(Debug)]
pub struct ApiError {
    /// Which row.
    pub kind: Kind,
    /// A message more specific than the table's, when there is one.
    pub message: Option<String>,
    /// The `detail` member.
    pub detail: Value,
    /// Extra response headers (e.g. `Range` on a 416).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// For a refused authentication or authorization, why (a `berth_auth_failures_total` label).
    pub auth_failure: Option<&'static str>,
}

impl ApiError {
    /// An error with the table's message.
    pub fn new(kind: Kind) -> ApiError {
        ApiError {
            kind,
            message: None,
            detail: Value::Null,
            headers: Vec::new(),
            auth_failure: None,
        }
    }

    /// Mark as an authentication or authorization failure with this reason.
    pub fn auth_failure(mut self, reason: &'static str) -> ApiError {
        self.auth_failure = Some(reason);
        self
    }

    /// Replace the message.
    pub fn message(mut self, m: impl Into<String>) -> ApiError {
        self.message = Some(m.into());
        self
    }

    /// Set the detail.
    pub fn detail(mut self, d: Value) -> ApiError {
        self.detail = d;
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: header::HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.row().1
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let (code, _, message) = self.kind.row();
        let message = self.message.as_deref().unwrap_or(message);
        let body = json!({"errors": [{"code": code, "message": message, "detail": self.detail}]});
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl From<Kind> for ApiError {
    fn from(k: Kind) -> Self {
        ApiError::new(k)
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        let kind = match e {
            ParseError::Name(_) => Kind::NameInvalid,
            ParseError::Tag => Kind::TagInvalid,
            ParseError::Digest(_) => Kind::DigestInvalid,
            ParseError::UploadId => Kind::BlobUploadUnknown,
        };
        ApiError::new(kind).message(e.to_string())
    }
}

/// `Retry-After` (seconds) when a cap on open upload sessions refuses one: sessions free up
/// as other uploads finish.
const UPLOAD_CAP_RETRY_AFTER: &str = "30";

impl From<berth_auth::Throttled> for ApiError {
    /// The same answer whatever the user name: it must not tell which users exist.
    fn from(t: berth_auth::Throttled) -> Self {
        let secs = t.retry_after_secs();
        ApiError::new(Kind::LoginThrottled)
            .detail(json!({"retryAfterSeconds": secs}))
            .header(header::RETRY_AFTER, &secs.to_string())
            .auth_failure("throttled")
    }
}

/// `Retry-After` (seconds) when a storage service cannot answer: a restarting database or a
/// blob's deletion is over in moments.
const UNAVAILABLE_RETRY_AFTER: &str = "1";

/// The Range header value for an upload that has `offset` bytes.
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BlobUnknown(d) => ApiError::new(Kind::BlobUnknown).detail(json!({"digest": d.to_string()})),
            EngineError::UploadUnknown => Kind::BlobUploadUnknown.into(),
            EngineError::UploadBusy => Kind::BlobUploadBusy.into(),
            EngineError::RangeMismatch { start, offset } => ApiError::new(Kind::RangeInvalid)
                .message(format!("chunk starts at byte {start} but the upload has {offset} bytes; send the chunk that starts at {offset}"))
                .header(header::RANGE, &upload_range(offset)),
            EngineError::SizeMismatch { declared, actual } => ApiError::new(Kind::SizeInvalid)
                .message(format!("Content-Range declared {declared} bytes but the body had {actual}")),
            EngineError::DigestMismatch { expected, actual } => ApiError::new(Kind::DigestInvalid)
                .detail(json!({"expected": expected.to_string(), "actual": actual.to_string()})),
            EngineError::ManifestUnknown(r) => ApiError::new(Kind::ManifestUnknown).detail(json!({"reference": r})),
            EngineError::ManifestInvalid(m) => ApiError::new(Kind::ManifestInvalid).message(format!("manifest invalid: {m}")),
            EngineError::ManifestBlobUnknown(d) => {
                ApiError::new(Kind::ManifestBlobUnknown).detail(json!({"digest": d.to_string()}))
            }
            EngineError::NameUnknown(n) => ApiError::new(Kind::NameUnknown).detail(json!({"name": n})),
            EngineError::TooManyUploads { cap, limit } => {
                let setting = match cap {
                    berth_engine::UploadCap::Owner => "http.limits.uploadsperclient",
                    berth_engine::UploadCap::Repository => "http.limits.uploadsperrepository",
                    berth_engine::UploadCap::Total => "http.limits.uploads",
                };
                ApiError::new(Kind::TooManyRequests)
                    .message(format!(
                        "too many open upload sessions for this {}: the limit is {limit} ({setting}); complete or cancel open uploads (DELETE their Location), or retry later: idle sessions are purged",
                        cap.as_str()
                    ))
                    .detail(json!({"limit": limit, "scope": cap.as_str()}))
                    .header(header::RETRY_AFTER, UPLOAD_CAP_RETRY_AFTER)
            }
            EngineError::Body(m) => ApiError::new(Kind::BlobUploadInvalid).message(format!("request body failed: {m}")),
            EngineError::Io(e) if e.raw_os_error() == Some(28) => {
                tracing::error!(error = %e, "storage full");
                Kind::StorageFull.into()
            }
            EngineError::Meta(berth_engine::MetaError::Unavailable(m))
            | EngineError::ObjectStore(berth_engine::ObjectStoreError::Unavailable(m)) => {
                tracing::warn!(error = %m, "storage unavailable");
                ApiError::new(Kind::Unavailable)
                    .message(m)
                    .header(header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER)
            }
            e @ (EngineError::Io(_)
            | EngineError::Meta(_)
            | EngineError::ObjectStore(_)
            | EngineError::StorageInUse { .. }) => {
                tracing::error!(error = %e, "internal error");
                Kind::Internal.into()
            }
        }
    }
}

/// `Retry-After` (seconds) when a mirror's upstream cannot answer and did not say when to
/// come back.
const UPSTREAM_RETRY_AFTER: u64 = 5;

/// The answer when a mirror's upstream failed (its absence of a manifest or blob is answered
/// as the engine's `*Unknown` errors by the caller).
pub fn upstream(e: &crate::mirror::upstream::UpstreamError) -> ApiError {
    use crate::mirror::upstream::UpstreamError as U;
    match e {
        U::Unavailable { retry_after, .. } => {
            let secs = retry_after.map_or(UPSTREAM_RETRY_AFTER, |d| d.as_secs().max(1));
            ApiError::new(Kind::UpstreamUnavailable)
                .message(e.to_string())
                .detail(json!({"retryAfterSeconds": secs}))
                .header(header::RETRY_AFTER, &secs.to_string())
        }
        U::NotFound | U::Denied(_) | U::Invalid(_) => ApiError::new(Kind::UpstreamFailed).message(e.to_string()),
    }
}

/// The answer when a mirror could not store a blob it fetched.
pub fn fill_store(e: &EngineError) -> ApiError {
    match e {
        EngineError::TooManyUploads { cap, limit } => EngineError::TooManyUploads {
            cap: *cap,
            limit: *limit,
        }
        .into(),
        EngineError::Io(io) if io.raw_os_error() == Some(28) => {
            tracing::error!(error = %io, "storage full");
            Kind::StorageFull.into()
        }
        EngineError::Meta(berth_engine::MetaError::Unavailable(m))
        | EngineError::ObjectStore(berth_engine::ObjectStoreError::Unavailable(m)) => ApiError::new(Kind::Unavailable)
            .message(m.clone())
            .header(header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER),
        other => {
            tracing::error!(error = %other, "storing a mirrored blob failed");
            Kind::Internal.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_storage_is_a_503_to_retry() {
        let e = ApiError::from(EngineError::Meta(berth_engine::MetaError::Unavailable(
            "blob sha256:ab is being deleted by garbage collection; push it again".into(),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("push it again"));
        assert!(e.headers.iter().any(|(h, v)| h == header::RETRY_AFTER && v == "1"));
        let e = ApiError::from(EngineError::Meta(berth_engine::MetaError::Database("x".into())));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = ApiError::from(EngineError::ObjectStore(berth_engine::ObjectStoreError::Unavailable(
            "GET blobs/x: connection refused".into(),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(EngineError::ObjectStore(berth_engine::ObjectStoreError::Refused {
            status: 403,
            detail: "PUT blobs/x: 403 AccessDenied".into(),
        }));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn body_has_spec_shape() {
        let e = ApiError::new(Kind::BlobUnknown).detail(json!({"digest": "sha256:x"}));
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown to registry");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn upload_range_header() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(10), "0-9");
    }
}
