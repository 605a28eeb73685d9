//! The registry operations the workloads are made of (OCI Distribution API calls).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::blob::{Blob, Pattern, ReqBody};
use crate::client::{Conn, collect, content_length, drain, location, next_link, octet_stream, with_param};
use crate::units::{default_chunk, split_chunks};

/// OCI image manifest media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer media type (the generated content is not a real tar; registries do not look inside).
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a monolithic push sends its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum MonoMode {
    /// `POST` to open a session, then one `PUT ?digest=` carrying the whole blob.
    PostPut,
    /// A single `POST ?digest=` carrying the whole blob (optional in the spec: a registry answering 202 fails).
    Post,
}

/// How a push uploads its layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// One request carries the blob ([`MonoMode`]).
    Mono,
    /// `POST`, `PATCH` × k with `Content-Range`, then `PUT ?digest=`.
    Chunked,
}

/// What every operation needs besides the connection.
pub struct Ctx {
    /// Blob content source.
    pub pattern: Arc<Pattern>,
    /// Monolithic upload flavour.
    pub mono: MonoMode,
    /// Chunk size for chunked pushes (`None`: a sixteenth of the blob, at least 64 KiB).
    pub chunk_size: Option<u64>,
    /// Whether pulls hash what they receive and compare it with the digest.
    pub verify_digest: bool,
}

/// Reads and discards the (normally empty) body of an upload-step response, keeping the connection usable.
async fn finish(resp: http::Response<hyper::body::Incoming>) -> Result<(), String> {
    drain(resp.into_body(), None).await.map(|_| ())
}

/// Opens an upload session; returns the session's location in origin form.
async fn open_session(conn: &mut Conn, repo: &str) -> Result<String, String> {
    let path = format!("/v2/{repo}/blobs/uploads/");
    let resp = conn
        .expect(Method::POST, &path, &[], ReqBody::Empty, StatusCode::ACCEPTED)
        .await?;
    let loc = location(&resp)?;
    finish(resp).await?;
    Ok(loc)
}

/// Uploads `body` (whose digest is `digest`) in one request; returns the bytes sent.
pub async fn upload_mono(
    conn: &mut Conn,
    mode: MonoMode,
    repo: &str,
    digest: &str,
    body: ReqBody,
) -> Result<u64, String> {
    let len = body.len();
    let path = match mode {
        MonoMode::PostPut => with_param(&open_session(conn, repo).await?, "digest", digest),
        MonoMode::Post => format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
    };
    let method = if mode == MonoMode::Post {
        Method::POST
    } else {
        Method::PUT
    };
    let resp = match conn
        .expect(method, &path, &[octet_stream()], body, StatusCode::CREATED)
        .await
    {
        Ok(resp) => resp,
        Err(e) if mode == MonoMode::Post && e.contains(" 202 ") => {
            return Err(format!("{e} (no single-POST upload support: use --mono post-put)"));
        }
        Err(e) => return Err(e),
    };
    finish(resp).await?;
    Ok(len)
}

/// Uploads a generated blob in chunks; returns the bytes sent.
pub async fn upload_chunked(conn: &mut Conn, ctx: &Ctx, repo: &str, blob: &Blob) -> Result<u64, String> {
    let chunk = ctx.chunk_size.unwrap_or_else(|| default_chunk(blob.size));
    let mut loc = open_session(conn, repo).await?;
    for range in split_chunks(blob.size, chunk) {
        let content_range = HeaderValue::try_from(format!("{}-{}", range.start, range.end - 1)).expect("ascii digits");
        let headers = [
            octet_stream(),
            (HeaderName::from_static("content-range"), content_range),
        ];
        let body = ReqBody::Gen(ctx.pattern.body(blob, range));
        let resp = conn
            .expect(Method::PATCH, &loc, &headers, body, StatusCode::ACCEPTED)
            .await?;
        loc = location(&resp)?;
        finish(resp).await?;
    }
    let resp = conn
        .expect(
            Method::PUT,
            &with_param(&loc, "digest", &blob.digest),
            &[],
            ReqBody::Empty,
            StatusCode::CREATED,
        )
        .await?;
    finish(resp).await?;
    Ok(blob.size)
}

/// Uploads the layer blob of an image the requested way; returns the bytes sent.
pub async fn upload_layer(conn: &mut Conn, ctx: &Ctx, repo: &str, blob: &Blob, how: Upload) -> Result<u64, String> {
    match how {
        Upload::Mono => {
            let body = ReqBody::Gen(ctx.pattern.body(blob, 0..blob.size));
            upload_mono(conn, ctx.mono, repo, &blob.digest, body).await
        }
        Upload::Chunked => upload_chunked(conn, ctx, repo, blob).await,
    }
}

/// The image config and manifest for a one-layer image, with their digests.
pub struct ImageDocs {
    /// Config JSON.
    pub config: Bytes,
    /// Config digest.
    pub config_digest: String,
    /// Manifest JSON.
    pub manifest: Bytes,
}

/// Builds a tiny config (unique per layer, since it names the layer) and an OCI manifest for `layer`.
pub fn image_docs(layer: &Blob) -> ImageDocs {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        layer.digest
    );
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(config.as_bytes())));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"{CONFIG_TYPE}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{LAYER_TYPE}","digest":"{}","size":{}}}]}}"#,
        config.len(),
        layer.digest,
        layer.size
    );
    ImageDocs {
        config: Bytes::from(config),
        config_digest,
        manifest: Bytes::from(manifest),
    }
}

/// Puts a manifest under `reference`; returns the bytes sent.
pub async fn put_manifest(conn: &mut Conn, repo: &str, reference: &str, manifest: Bytes) -> Result<u64, String> {
    let len = manifest.len() as u64;
    let path = format!("/v2/{repo}/manifests/{reference}");
    let headers = [(CONTENT_TYPE, HeaderValue::from_static(MANIFEST_TYPE))];
    let resp = conn
        .expect(
            Method::PUT,
            &path,
            &headers,
            ReqBody::full(manifest),
            StatusCode::CREATED,
        )
        .await?;
    finish(resp).await?;
    Ok(len)
}

/// Pushes a whole one-layer image (layer, config, manifest tagged `tag`); returns the bytes sent.
pub async fn push_image(
    conn: &mut Conn,
    ctx: &Ctx,
    repo: &str,
    tag: &str,
    layer: &Blob,
    how: Upload,
) -> Result<u64, String> {
    let mut sent = upload_layer(conn, ctx, repo, layer, how).await?;
    let docs = image_docs(layer);
    sent += upload_mono(conn, ctx.mono, repo, &docs.config_digest, ReqBody::full(docs.config)).await?;
    sent += put_manifest(conn, repo, tag, docs.manifest).await?;
    Ok(sent)
}

/// Whether the registry has blob `digest` in `repo` (HEAD: 200 yes, 404 no).
pub async fn blob_exists(conn: &mut Conn, repo: &str, digest: &str) -> Result<bool, String> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = conn.send(Method::HEAD, &path, &[], ReqBody::Empty).await?;
    let status = resp.status();
    finish(resp).await?;
    match status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => Err(format!("HEAD {path}: {other}")),
    }
}

/// Pushes a setup image unless its blobs are already there (the manifest is always put).
pub async fn ensure_image(conn: &mut Conn, ctx: &Ctx, repo: &str, tag: &str, layer: &Blob) -> Result<(), String> {
    if !blob_exists(conn, repo, &layer.digest).await? {
        upload_layer(conn, ctx, repo, layer, Upload::Mono).await?;
    }
    let docs = image_docs(layer);
    if !blob_exists(conn, repo, &docs.config_digest).await? {
        upload_mono(conn, ctx.mono, repo, &docs.config_digest, ReqBody::full(docs.config)).await?;
    }
    put_manifest(conn, repo, tag, docs.manifest).await?;
    Ok(())
}

/// GETs a blob, checking its length (and digest when `ctx.verify_digest`); returns the bytes received.
pub async fn pull_blob(conn: &mut Conn, ctx: &Ctx, repo: &str, digest: &str, size: u64) -> Result<u64, String> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = conn
        .expect(Method::GET, &path, &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    let mut hasher = ctx.verify_digest.then(Sha256::new);
    let n = drain(resp.into_body(), hasher.as_mut()).await?;
    if n != size {
        return Err(format!("GET {path}: got {n} bytes, want {size}"));
    }
    if let Some(h) = hasher {
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != digest {
            return Err(format!("GET {path}: content digest {got} does not match"));
        }
    }
    Ok(n)
}

/// HEADs a blob, checking the advertised `Content-Length`; moves no payload bytes.
pub async fn head_blob(conn: &mut Conn, repo: &str, digest: &str, size: u64) -> Result<u64, String> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = conn
        .expect(Method::HEAD, &path, &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    let len = content_length(&resp);
    finish(resp).await?;
    if len != Some(size) {
        return Err(format!("HEAD {path}: Content-Length {len:?}, want {size}"));
    }
    Ok(0)
}

/// GETs a manifest by tag; returns the bytes received.
pub async fn get_manifest(conn: &mut Conn, repo: &str, tag: &str) -> Result<u64, String> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let accept = HeaderValue::from_static(
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json",
    );
    let resp = conn
        .expect(Method::GET, &path, &[(ACCEPT, accept)], ReqBody::Empty, StatusCode::OK)
        .await?;
    let body = collect(resp.into_body()).await?;
    if body.is_empty() {
        return Err(format!("GET {path}: empty manifest"));
    }
    Ok(body.len() as u64)
}

/// GETs the catalog; returns the bytes received.
pub async fn catalog(conn: &mut Conn) -> Result<u64, String> {
    let resp = conn
        .expect(Method::GET, "/v2/_catalog", &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    drain(resp.into_body(), None).await
}

/// One page of a listing (`/v2/_catalog?...` or `/v2/<repo>/tags/list?...`): the number of entries
/// (repositories or tags) and the next page's path from the `Link` header.
pub async fn list_page(conn: &mut Conn, path: &str) -> Result<(u64, Option<String>), String> {
    let resp = conn
        .expect(Method::GET, path, &[], ReqBody::Empty, StatusCode::OK)
        .await?;
    let next = resp
        .headers()
        .get(http::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(next_link);
    let body = collect(resp.into_body()).await?;
    Ok((count_entries(&body).map_err(|e| format!("GET {path}: {e}"))?, next))
}

/// Entries of a catalog (`repositories`) or tag list (`tags`) body; `null` counts as none.
pub fn count_entries(body: &[u8]) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("listing is not JSON: {e}"))?;
    let list = v.get("repositories").or_else(|| v.get("tags"));
    match list {
        Some(serde_json::Value::Array(a)) => Ok(a.len() as u64),
        Some(serde_json::Value::Null) => Ok(0),
        _ => Err("listing has neither a repositories nor a tags array".into()),
    }
}

/// Checks that the target speaks the distribution API (`GET /v2/` answers 200, or 401 when unauthenticated).
pub async fn ping(conn: &mut Conn) -> Result<(), String> {
    let resp = conn.send(Method::GET, "/v2/", &[], ReqBody::Empty).await?;
    let status = resp.status();
    finish(resp).await?;
    match status {
        StatusCode::OK => Ok(()),
        other => Err(format!("GET /v2/: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_count() {
        assert_eq!(count_entries(br#"{"repositories":["a","b","c"]}"#), Ok(3));
        assert_eq!(count_entries(br#"{"name":"a","tags":["t0"]}"#), Ok(1));
        assert_eq!(count_entries(br#"{"name":"a","tags":null}"#), Ok(0));
        assert!(count_entries(br#"{"name":"a"}"#).is_err());
        assert!(count_entries(b"<html>").is_err());
    }
}
