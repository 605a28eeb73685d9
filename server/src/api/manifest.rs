//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode, header};

use berth_engine::manifest::MAX_MANIFEST_SIZE;
use berth_engine::{Reference, RepoName};

use super::{App, Body, Req, check_delete_enabled, empty, finish, full, header_str, response};
use crate::error::{ApiError, Kind};

pub(super) async fn get(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let m = match app.mirror_target(repo) {
        Some((mirrors, t)) => mirrors.manifest(&app.engine, &t, repo, reference).await?,
        None => app.engine.manifest_get(repo, reference).await?,
    };
    let b = response(StatusCode::OK)
        .header(header::CONTENT_TYPE, m.media_type.as_str())
        .header("docker-content-digest", m.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", m.digest))
        .header(header::CONTENT_LENGTH, m.bytes.len());
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(m.bytes.clone())
    };
    finish(b, body)
}

/// The answer to a manifest request whose reference is neither a valid tag nor a valid digest
/// (docs/api.md): no manifest can be stored under it, so reads and deletes find none (404
/// `MANIFEST_UNKNOWN`, as clients and the reference registry expect), and a push is told the tag
/// is invalid (400 `TAG_INVALID`, or `DIGEST_INVALID` when it has a digest's `algorithm:`
/// prefix). A delete on a registry that refuses deletes is refused as such first.
pub(super) fn bad_reference(app: &App, reference: &str, method: &Method) -> Result<Response<Body>, ApiError> {
    if method == Method::DELETE {
        check_delete_enabled(app)?;
    }
    let shown: String = reference.chars().take(140).collect();
    Err(if method == Method::PUT {
        if reference.contains(':') {
            ApiError::new(Kind::DigestInvalid).message(format!(
                "{shown:?} is not a valid digest (algorithm:hex, e.g. sha256:<64 hex digits>)"
            ))
        } else {
            ApiError::new(Kind::TagInvalid).message(format!(
                "{shown:?} is not a valid tag: up to 128 characters of [A-Za-z0-9_.-], not starting with . or -"
            ))
        }
    } else {
        ApiError::new(Kind::ManifestUnknown)
            .message(format!(
                "manifest unknown: {shown:?} is neither a valid tag nor a valid digest"
            ))
            .detail(serde_json::json!({"reference": shown}))
    })
}

/// The manifest body, read under the body limits; larger than [`MAX_MANIFEST_SIZE`] is refused
/// as soon as that is known (what is left unread is drained by the dispatcher, so the client
/// reads the 413 on a healthy connection).
async fn read_manifest_body(req: Req, limits: crate::config::BodyLimits) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt as _;
    let too_large =
        || ApiError::new(Kind::ManifestTooLarge).message(format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"));
    let declared = header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST_SIZE as u64) {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(crate::body::guarded(req.into_body(), limits, |_| {}));
    let mut buf = BytesMut::new();
    while let Some(data) = body.next().await {
        let data = data
            .map_err(|e| ApiError::new(Kind::ManifestInvalid).message(format!("reading the manifest failed: {e}")))?;
        if buf.len() + data.len() > MAX_MANIFEST_SIZE {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

pub(super) async fn put(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    req: Req,
) -> Result<Response<Body>, ApiError> {
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let bytes = read_manifest_body(req, app.config.body_limits).await?;
    let pushed = app
        .engine
        .manifest_put(repo, reference, content_type.as_deref(), bytes)
        .await?;
    let mut b = response(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/manifests/{}", pushed.digest))
        .header("docker-content-digest", pushed.digest.to_string())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(s) = &pushed.subject {
        b = b.header("oci-subject", s.to_string());
    }
    finish(b, empty())
}

pub(super) async fn delete(app: &App, repo: &RepoName, reference: &Reference) -> Result<Response<Body>, ApiError> {
    check_delete_enabled(app)?;
    app.engine.manifest_delete(repo, reference).await?;
    finish(
        response(StatusCode::ACCEPTED).header(header::CONTENT_LENGTH, 0),
        empty(),
    )
}
