//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use futures_util::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use berth_engine::{ByteRange, Digest, RepoName};

use super::{App, Body, Req, check_delete_enabled, empty, finish, header_str, response};
use crate::error::{ApiError, Kind};
use crate::range::{RangeRequest, parse_range};

pub(super) async fn get(app: &App, repo: &RepoName, digest: &Digest, req: &Req) -> Result<Response<Body>, ApiError> {
    let size = app.engine.blob_size(repo, digest).await?;
    let head = req.method() == http::Method::HEAD;
    // The digest's text once, for both headers that carry it.
    let etag = format!("\"{digest}\"");
    let base = response(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", &etag[1..etag.len() - 1])
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag.as_str())
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let (builder, range) = match parse_range(header_str(req.headers(), header::RANGE), size) {
        RangeRequest::Full => (
            base.header(header::CONTENT_LENGTH, size),
            ByteRange { start: 0, len: size },
        ),
        RangeRequest::Partial(r) => (
            base.status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_LENGTH, r.len)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{}", r.start, r.start + r.len - 1, size),
                ),
            r,
        ),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::new(Kind::RangeNotSatisfiable)
                .message(format!("the blob has {size} bytes"))
                .header(header::CONTENT_RANGE, &format!("bytes */{size}")));
        }
    };
    if head || range.len == 0 {
        return finish(builder, empty());
    }
    if let Some(url) = app.engine.blob_url(digest).await? {
        // The object store serves the bytes (and the Range, which the client sends again).
        return finish(
            response(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header("docker-content-digest", digest.to_string())
                .header(header::CONTENT_LENGTH, 0),
            empty(),
        );
    }
    let stream = app.engine.blob_read(digest, range).await?;
    let body = BodyExt::boxed(StreamBody::new(stream.map(|r| r.map(Frame::data))));
    finish(builder, body)
}

pub(super) async fn delete(app: &App, repo: &RepoName, digest: &Digest) -> Result<Response<Body>, ApiError> {
    check_delete_enabled(app)?;
    app.engine.blob_delete(repo, digest).await?;
    finish(
        response(StatusCode::ACCEPTED)
            .header(header::CONTENT_LENGTH, 0)
            .header("docker-content-digest", digest.to_string()),
        empty(),
    )
}
