//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use berth_engine::manifest::MAX_MANIFEST_SIZE;
use berth_engine::{Reference, RepoName};

use super::{App, Body, check_delete_enabled, empty, finish, full, header_str, response};
use crate::error::{ApiError, Kind};

pub(super) async fn get(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let m = app.engine.manifest_get(repo, reference).await?;
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

/// Bytes of an oversized manifest body read and thrown away so the client can read the 413 on
/// a healthy connection; beyond this the connection is closed instead.
const DRAIN_LIMIT: usize = 4 * MAX_MANIFEST_SIZE;

async fn read_manifest_body(req: Request<Incoming>, idle: std::time::Duration) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(Kind::ManifestTooLarge).message(format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"));
    let declared = header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(ApiError::new(Kind::ManifestInvalid).message(format!(
                "the manifest body paused for more than {}s (http.timeouts.body)",
                idle.as_secs()
            )));
        };
        let Some(frame) = frame else { break };
        let frame = frame
            .map_err(|e| ApiError::new(Kind::ManifestInvalid).message(format!("reading the manifest failed: {e}")))?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= MAX_MANIFEST_SIZE {
                buf.extend_from_slice(data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_MANIFEST_SIZE {
        Err(too_large())
    } else {
        Ok(buf.freeze())
    }
}

pub(super) async fn put(
    app: &App,
    repo: &RepoName,
    reference: &Reference,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let bytes = read_manifest_body(req, app.config.body_timeout).await?;
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
