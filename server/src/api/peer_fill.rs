//! `GET /v2/_berth/fills/<digest>`: a mirror download this process runs, streamed to another
//! replica that presents the download's token (see [`crate::mirror::peer`]).

use futures_util::StreamExt;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use berth_engine::{ByteRange, Digest, Error};

use super::{App, Body, Req, finish, header_str, response};
use crate::error::{ApiError, Kind};
use crate::mirror::peer::{PATH, TOKEN_HEADER};

/// The whole blob as the fill brings it in (its last byte once it is verified and stored). A
/// digest this process is not downloading, or a wrong token, is answered as an unknown blob: the
/// caller then waits for the stored blob.
pub(super) async fn serve(app: &App, req: &Req) -> Result<http::Response<Body>, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::new(Kind::MethodNotAllowed).message("only GET is allowed here"));
    }
    let text = req.uri().path().strip_prefix(PATH).unwrap_or("");
    let digest: Digest = text.parse()?;
    let not_here = || ApiError::from(Error::BlobUnknown(digest.clone()));
    let token = header_str(req.headers(), http::HeaderName::from_static(TOKEN_HEADER)).unwrap_or("");
    let fill = app
        .mirrors
        .as_deref()
        .and_then(|m| m.fill_for_peer(&digest, token))
        .ok_or_else(not_here)?;
    let size = fill.size().await.map_err(|_| not_here())?;
    let body = fill.stream(ByteRange { start: 0, len: size });
    finish(
        response(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .header("docker-content-digest", digest.to_string()),
        BodyExt::boxed(StreamBody::new(body.map(|r| r.map(Frame::data)))),
    )
}
