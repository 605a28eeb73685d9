//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use futures_util::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use berth_engine::{ByteRange, Digest, Error, RepoName};

use super::upload::owner;
use super::{App, Body, Req, check_delete_enabled, empty, finish, header_str, response};
use crate::access::Caller;
use crate::error::{ApiError, Kind};
use crate::mirror::Missing;
use crate::mirror::fill::Fill;
use crate::range::{RangeRequest, parse_range};

/// Where a blob's bytes come from.
enum Source {
    /// Storage.
    Stored,
    /// A mirror's fill in progress.
    Filling(Arc<Fill>),
    /// Nowhere: a HEAD answered with the upstream's size.
    Headers,
    /// Another process's fill, streamed from there: the whole blob.
    Peer(crate::mirror::upstream::BlobBody),
}

/// The blob's size and source: stored in the repository, or (in a mirrored repository) linked,
/// being fetched, or only known upstream.
async fn locate(
    app: &App,
    caller: &Caller,
    repo: &RepoName,
    digest: &Digest,
    head: bool,
) -> Result<(u64, Source), ApiError> {
    let err = match app.engine.blob_size(repo, digest).await {
        Ok(size) => {
            if let Some((_, t)) = app.mirror_target(repo) {
                t.entry.stats.hits.fetch_add(1, Relaxed);
            }
            return Ok((size, Source::Stored));
        }
        Err(e) => e,
    };
    let (Error::BlobUnknown(_), Some((mirrors, t))) = (&err, app.mirror_target(repo)) else {
        return Err(err.into());
    };
    match mirrors
        .missing_blob(&app.engine, &t, repo, digest, &owner(caller), head)
        .await?
    {
        Missing::Linked => Ok((app.engine.blob_size(repo, digest).await?, Source::Stored)),
        Missing::Filling(fill, size) => Ok((size, Source::Filling(fill))),
        Missing::Upstream(size) => Ok((size, Source::Headers)),
        Missing::Peer(body, size) => Ok((size, Source::Peer(body))),
    }
}

pub(super) async fn get(
    app: &App,
    caller: &Caller,
    repo: &RepoName,
    digest: &Digest,
    req: &Req,
) -> Result<Response<Body>, ApiError> {
    let head = req.method() == http::Method::HEAD;
    let (size, source) = locate(app, caller, repo, digest, head).await?;
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
    match source {
        Source::Stored => {}
        Source::Filling(fill) => {
            let body = BodyExt::boxed(StreamBody::new(fill.stream(range).map(|r| r.map(Frame::data))));
            return finish(builder, body);
        }
        Source::Headers => return finish(builder, empty()),
        Source::Peer(body) => {
            let body = BodyExt::boxed(StreamBody::new(slice(body, range).map(|r| r.map(Frame::data))));
            return finish(builder, body);
        }
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

/// `range` of a stream of the whole blob: the bytes before it skipped, the stream ended after
/// it. (Read by a task of its own: the response body must be `Sync`, the peer's body is not.)
fn slice(
    mut body: crate::mirror::upstream::BlobBody,
    range: ByteRange,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let end = range.start + range.len;
    tokio::spawn(async move {
        let mut pos = 0u64;
        while pos < end {
            let piece = match body.next().await {
                // Ended short of the range: the client must see a broken body, not a short one.
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the replica's stream ended after {pos} bytes"),
                )),
                Some(Err(e)) => Err(e),
                Some(Ok(b)) => {
                    let (from, to) = (pos, pos + b.len() as u64);
                    pos = to;
                    let (lo, hi) = (range.start.clamp(from, to), end.clamp(from, to));
                    if hi == lo {
                        continue;
                    }
                    Ok(b.slice((lo - from) as usize..(hi - from) as usize))
                }
            };
            let failed = piece.is_err();
            // The client went away, or the stream broke: stop reading.
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
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
