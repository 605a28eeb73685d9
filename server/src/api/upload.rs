//! Upload sessions: `POST /v2/<name>/blobs/uploads/` (start, monolithic, mount) and
//! `PATCH`/`PUT`/`GET`/`DELETE /v2/<name>/blobs/uploads/<id>`.

use http::{Response, StatusCode, header};

use berth_engine::{ChunkRange, Digest, RepoName, UploadId};

use super::{App, Body, Req, empty, finish, header_str, query, response};
use crate::access::Caller;
use crate::body::BodyError;
use crate::error::{ApiError, Kind, upload_range};
use crate::range::parse_content_range;
use berth_auth::Action;

/// Run an engine call that writes an upload session to its end, even if the client goes away
/// and hyper drops the request: the call then sees its body fail and undoes what it wrote, with
/// the session still taken. Dropped half-way instead, it would give the session up while a
/// write of its was still in flight, and that write could land in a later request's data.
async fn to_the_end<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, berth_engine::Error>> + Send + 'static,
) -> Result<T, berth_engine::Error> {
    tokio::spawn(call)
        .await
        .unwrap_or_else(|e| Err(berth_engine::Error::Io(std::io::Error::other(e))))
}

/// The request body as a stream of frames under the body limits, counted into the metrics as
/// it arrives.
fn counted_body(
    app: &App,
    kind: &'static str,
    req: Req,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, BodyError>> + Send + 'static {
    let metrics = app.metrics.clone();
    crate::body::guarded(req.into_body(), app.config.body_limits, move |n| {
        metrics.received(kind, n as u64)
    })
}

/// Chunk size advertised in `OCI-Chunk-Min-Length`: chunks of at least this size keep request
/// overhead small. Smaller chunks are still accepted.
pub const CHUNK_MIN_LENGTH: u64 = 1024 * 1024;

fn session_location(repo: &RepoName, id: UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn session_response(
    status: StatusCode,
    repo: &RepoName,
    id: UploadId,
    offset: u64,
) -> Result<Response<Body>, ApiError> {
    finish(
        response(status)
            .header(header::LOCATION, session_location(repo, id))
            .header(header::RANGE, upload_range(offset))
            .header("docker-upload-uuid", id.to_string())
            .header(header::CONTENT_LENGTH, 0),
        empty(),
    )
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Result<Response<Body>, ApiError> {
    finish(
        response(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
            .header("docker-content-digest", digest.to_string())
            .header(header::CONTENT_LENGTH, 0),
        empty(),
    )
}

fn digest_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<Digest>, ApiError> {
    q.get(name)
        .map(|d| d.parse::<Digest>().map_err(ApiError::from))
        .transpose()
}

/// The body's length as the request declares it (`Content-Length`, as hyper read it: it ends
/// the body with an error if fewer bytes come). Absent with chunked transfer encoding.
fn declared_length(req: &Req) -> Option<u64> {
    hyper::body::Body::size_hint(req.body()).exact()
}

async fn content_range(app: &App, repo: &RepoName, id: UploadId, req: &Req) -> Result<Option<ChunkRange>, ApiError> {
    let Some(h) = header_str(req.headers(), header::CONTENT_RANGE) else {
        return Ok(None);
    };
    match parse_content_range(h) {
        Some(r) => Ok(Some(r)),
        None => {
            let offset = app.engine.upload_offset(repo, id).await?;
            Err(ApiError::new(Kind::RangeInvalid)
                .message(format!("malformed Content-Range {h:?}; send start-end, e.g. 0-1023"))
                .header(header::RANGE, &upload_range(offset)))
        }
    }
}

/// Whom an upload session counts for under `http.limits.uploadsperclient`: the user, or the
/// client's address when anonymous.
pub(super) fn owner(caller: &Caller) -> String {
    match (&caller.user, caller.client) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(ip)) => format!("addr:{ip}"),
        (None, None) => String::new(),
    }
}

pub(super) async fn start(app: &App, caller: &Caller, repo: &RepoName, req: Req) -> Result<Response<Body>, ApiError> {
    let q = query(req.uri());
    if let Some(digest) = digest_param(&q, "mount")? {
        let from = q.get("from").map(|f| f.parse::<RepoName>()).transpose()?;
        // Mount only from where the caller may read; otherwise fall back to a normal upload,
        // as clients expect. Without `from`, any repository will do only when no rules limit
        // reading (the caller could not name a repository it may read otherwise).
        let readable = match &from {
            Some(f) => app.access.allows(&app.authn, caller, f.as_str(), Action::Pull),
            None => !app.access.filters_catalog_for(caller) && !matches!(*app.authn, crate::authn::Authn::Token(_)),
        };
        if readable && app.engine.blob_mount(repo, &digest, from.as_ref()).await? {
            return blob_created(repo, &digest);
        }
    } else if let Some(digest) = digest_param(&q, "digest")? {
        let id = app.engine.upload_start_as(repo, &owner(caller)).await?;
        let length = declared_length(&req);
        let body = counted_body(app, "upload_start", req);
        let (engine, r, d) = (app.engine.clone(), repo.clone(), digest.clone());
        let finished = to_the_end(async move { engine.upload_finish(&r, id, &d, None, length, body).await }).await;
        return match finished {
            Ok(_) => blob_created(repo, &digest),
            Err(e) => {
                if let Err(c) = app.engine.upload_cancel(repo, id).await {
                    tracing::warn!(error = %c, upload = %id, "removing a failed monolithic upload failed");
                }
                Err(e.into())
            }
        };
    }
    let id = app.engine.upload_start_as(repo, &owner(caller)).await?;
    let mut resp = session_response(StatusCode::ACCEPTED, repo, id, 0)?;
    resp.headers_mut()
        .insert("oci-chunk-min-length", CHUNK_MIN_LENGTH.into());
    Ok(resp)
}

pub(super) async fn patch(app: &App, repo: &RepoName, id: UploadId, req: Req) -> Result<Response<Body>, ApiError> {
    let range = content_range(app, repo, id, &req).await?;
    let length = declared_length(&req);
    let body = counted_body(app, "upload", req);
    let (engine, r) = (app.engine.clone(), repo.clone());
    let offset = to_the_end(async move { engine.upload_append(&r, id, range, length, body).await }).await?;
    session_response(StatusCode::ACCEPTED, repo, id, offset)
}

pub(super) async fn put(app: &App, repo: &RepoName, id: UploadId, req: Req) -> Result<Response<Body>, ApiError> {
    let q = query(req.uri());
    let digest = digest_param(&q, "digest")?.ok_or_else(|| {
        ApiError::new(Kind::DigestInvalid).message("the digest query parameter is required to complete an upload")
    })?;
    let range = content_range(app, repo, id, &req).await?;
    let length = declared_length(&req);
    let body = counted_body(app, "upload", req);
    let (engine, r, d) = (app.engine.clone(), repo.clone(), digest.clone());
    to_the_end(async move { engine.upload_finish(&r, id, &d, range, length, body).await }).await?;
    blob_created(repo, &digest)
}

pub(super) async fn status(app: &App, repo: &RepoName, id: UploadId) -> Result<Response<Body>, ApiError> {
    let offset = app.engine.upload_offset(repo, id).await?;
    session_response(StatusCode::NO_CONTENT, repo, id, offset)
}

pub(super) async fn cancel(app: &App, repo: &RepoName, id: UploadId) -> Result<Response<Body>, ApiError> {
    app.engine.upload_cancel(repo, id).await?;
    finish(response(StatusCode::NO_CONTENT), empty())
}
