//! The S3 requests the object store makes: signed with SigV4 by `rusty-s3` (as presigned URLs
//! with an unsigned payload), sent by the hyper client (plain HTTP or TLS with the system's root
//! certificates). Each call is one request, retried a few times when the store could not be
//! reached or answered 5xx; errors say what failed, with the store's code and message, never a
//! credential.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::sync::mpsc;

use super::settings::S3Settings;
use crate::error::{Error, ObjectStoreError, Result};

/// How long the signature of one request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// Attempts of a request that failed in a way worth retrying.
const ATTEMPTS: u32 = 3;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, below the root directory.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Seconds since it was last written (0 when the store did not say).
    pub age_secs: u64,
}

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Its key, below the root directory.
    pub key: String,
    /// The upload id S3 gave it.
    pub upload_id: String,
    /// Seconds since it was started.
    pub age_secs: u64,
}

/// The headers of a request that makes an object, sorted by name as SigV4 signs them.
fn new_object_headers(s: &S3Settings) -> Vec<(&'static str, String)> {
    let mut h: Vec<(&'static str, String)> = s.encryption.iter().flat_map(|e| e.headers()).collect();
    if let Some(c) = &s.storage_class {
        h.push(("x-amz-storage-class", c.clone()));
    }
    h.sort_by_key(|(k, _)| *k);
    h
}

/// A bucket, with its credentials and an HTTP client. Cheap to clone (clones share one
/// connection pool).
#[derive(Clone)]
pub struct S3Client {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    http: Client<Https, Full<Bytes>>,
    bucket: Bucket,
    creds: Credentials,
    root: String,
    /// Sent (and signed) with every request that makes an object: storage class, encryption.
    new_object_headers: Vec<(&'static str, String)>,
    presign_expiry: Duration,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("bucket", &self.inner.bucket.name())
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// A client for the bucket `s` names (no request is made).
    pub fn new(s: &S3Settings) -> Result<S3Client> {
        let settings = |m: String| Error::ObjectStore(ObjectStoreError::Settings(m));
        let endpoint: url::Url = s
            .endpoint
            .parse()
            .map_err(|e| settings(format!("storage.s3.regionendpoint: {:?} is not a URL: {e}", s.endpoint)))?;
        let style = if s.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, s.bucket.clone(), s.region.clone()).map_err(|e| {
            settings(format!(
                "storage.s3.bucket / storage.s3.regionendpoint: no bucket URL can be made of {:?} at {} ({e}; an IP address or a local host name needs storage.s3.forcepathstyle: true)",
                s.bucket, s.endpoint
            ))
        })?;
        let creds = match &s.session_token {
            Some(t) => Credentials::new_with_token(s.access_key.clone(), s.secret_key.clone(), t.clone()),
            None => Credentials::new(s.access_key.clone(), s.secret_key.clone()),
        };
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(s.connect_timeout));
        connector.set_nodelay(true);
        let https = tls(s.skip_verify)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        // Vectored writes: a part's body is queued as it is, never copied. Without this, hyper
        // flattens a body it cannot tell the connection writes vectored (the TLS-or-plain stream
        // does not say) into the connection's buffer: a whole part copied, and a part-sized
        // buffer kept by every pooled connection.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http1_writev(true)
            .build(https);
        Ok(S3Client {
            inner: std::sync::Arc::new(Inner {
                http,
                bucket,
                creds,
                root: s.root_directory.trim_matches('/').to_owned(),
                new_object_headers: new_object_headers(s),
                presign_expiry: s.presign_expiry,
            }),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.inner.bucket.name()
    }

    /// The full key of `key` (below the root directory).
    fn full(&self, key: &str) -> String {
        if self.inner.root.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.inner.root)
        }
    }

    /// `key` with the root directory taken off, when it is under it.
    fn relative<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.inner.root.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(&self.inner.root)?.strip_prefix('/')
        }
    }

    /// Send one request, retried when worth it; the answer's head and whole body (for the
    /// small answers of every call but [`S3Client::get`]).
    async fn call(
        &self,
        what: &str,
        method: Method,
        url: impl Fn() -> url::Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes)> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let res = self.send(what, method.clone(), url(), headers, body.clone()).await;
            let res = match res {
                Ok((parts, incoming)) => match incoming.collect().await {
                    Ok(b) => Ok((parts, b.to_bytes())),
                    Err(e) => Err(unreachable(what, &e)),
                },
                Err(e) => Err(e),
            };
            let retry = match &res {
                Ok((parts, _)) => parts.status.is_server_error(),
                Err(Error::ObjectStore(ObjectStoreError::Unavailable(_))) => true,
                Err(_) => false,
            };
            if !retry || attempt == ATTEMPTS {
                let (parts, bytes) = res?;
                if !parts.status.is_success() {
                    return Err(refused(what, parts.status, &bytes));
                }
                return Ok((parts, bytes));
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
            attempt += 1;
        }
    }

    async fn send(
        &self,
        what: &str,
        method: Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(http::response::Parts, hyper::body::Incoming)> {
        let mut req = http::Request::builder().method(method).uri(url.as_str());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| Error::ObjectStore(ObjectStoreError::Failed(format!("{what}: {e}"))))?;
        let resp = self.inner.http.request(req).await.map_err(|e| unreachable(what, &e))?;
        Ok(resp.into_parts())
    }

    /// Whether the bucket answers signed requests (a start-up and readiness check): the error
    /// says what is wrong, naming the setting.
    pub async fn check_bucket(&self) -> Result<()> {
        let what = format!("bucket {}", self.inner.bucket.name());
        let url = || self.inner.bucket.head_bucket(Some(&self.inner.creds)).sign(SIGNED_FOR);
        match self.call(&what, Method::HEAD, url, &[], Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(Error::ObjectStore(ObjectStoreError::Refused { status, .. })) => {
                let why = match status {
                    404 => format!(
                        "storage.s3.bucket: the bucket {:?} does not exist at this endpoint; create it first",
                        self.inner.bucket.name()
                    ),
                    403 | 401 => format!(
                        "storage.s3.accesskey / storage.s3.secretkey: the store refused them for bucket {:?} (403: wrong key or secret, or no access to the bucket)",
                        self.inner.bucket.name()
                    ),
                    301 | 400 => format!(
                        "storage.s3.region: the store answered {status} for bucket {:?}: the bucket is in another region, or the endpoint wants other addressing (storage.s3.forcepathstyle)",
                        self.inner.bucket.name()
                    ),
                    s => format!(
                        "the store answered {s} to a HEAD of bucket {:?}",
                        self.inner.bucket.name()
                    ),
                };
                Err(Error::ObjectStore(ObjectStoreError::Settings(why)))
            }
            Err(e) => Err(e),
        }
    }

    /// With `storage.s3.encrypt`: whether the store takes an encrypted write (a start-up check; a
    /// store without server-side encryption would otherwise fail every push). Writes and deletes
    /// one small object, `berth-encryption-check`.
    pub async fn check_encryption(&self) -> Result<()> {
        if !self
            .inner
            .new_object_headers
            .iter()
            .any(|(k, _)| *k == "x-amz-server-side-encryption")
        {
            return Ok(());
        }
        const KEY: &str = "berth-encryption-check";
        match self.put(KEY, Bytes::from_static(b"encrypted write check\n")).await {
            Ok(()) => self.delete(KEY).await,
            Err(Error::ObjectStore(
                ObjectStoreError::Refused { detail, .. } | ObjectStoreError::Unavailable(detail),
            )) => Err(Error::ObjectStore(ObjectStoreError::Settings(format!(
                "storage.s3.encrypt: the store refused an encrypted write to bucket {:?} ({detail}); it may have no server-side encryption set up (MinIO needs a KMS, SeaweedFS s3.sse.kek; with storage.s3.keyid, the key must exist and be usable by storage.s3.accesskey), or set storage.s3.encrypt: false",
                self.inner.bucket.name()
            )))),
            Err(e) => Err(e),
        }
    }

    /// Store a whole object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full = self.full(key);
        let url = || {
            let mut a = self.inner.bucket.put_object(Some(&self.inner.creds), &full);
            for (k, v) in &self.inner.new_object_headers {
                a.headers_mut().insert(*k, v.clone());
            }
            a.sign(SIGNED_FOR)
        };
        let headers = &self.inner.new_object_headers;
        self.call(&format!("PUT {full}"), Method::PUT, url, headers, data)
            .await?;
        Ok(())
    }

    /// A whole small object, `None` when there is none.
    pub async fn get_small(&self, key: &str) -> Result<Option<Bytes>> {
        let full = self.full(key);
        let url = || {
            self.inner
                .bucket
                .get_object(Some(&self.inner.creds), &full)
                .sign(SIGNED_FOR)
        };
        match self
            .call(&format!("GET {full}"), Method::GET, url, &[], Bytes::new())
            .await
        {
            Ok((_, b)) => Ok(Some(b)),
            Err(Error::ObjectStore(ObjectStoreError::Refused { status: 404, .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stream `len` bytes of an object from `start` into a channel, in the store's frames;
    /// `NotFound` when there is no such object.
    pub async fn get(&self, key: &str, start: u64, len: u64) -> Result<mpsc::Receiver<std::io::Result<Bytes>>> {
        let full = self.full(key);
        let what = format!("GET {full}");
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        let mut attempt = 1;
        let (parts, body) = loop {
            let url = self
                .inner
                .bucket
                .get_object(Some(&self.inner.creds), &full)
                .sign(SIGNED_FOR);
            match self
                .send(&what, Method::GET, url, &[("range", range.clone())], Bytes::new())
                .await
            {
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, "retrying");
                }
                Ok((p, _)) if p.status.is_server_error() && attempt < ATTEMPTS => {}
                other => break other?,
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            attempt += 1;
        };
        if parts.status == StatusCode::NOT_FOUND {
            return Err(Error::ObjectStore(ObjectStoreError::NotFound(full)));
        }
        if !parts.status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(refused(&what, parts.status, &bytes));
        }
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut stream = http_body_util::BodyDataStream::new(body);
            let mut left = len;
            while left > 0 {
                match stream.next().await {
                    Some(Ok(mut b)) => {
                        if b.len() as u64 > left {
                            b.truncate(left as usize);
                        }
                        left -= b.len() as u64;
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("{what}: {e}")))).await;
                        return;
                    }
                    None => {
                        let e = format!("{what}: the store ended the object {left} bytes early");
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// A presigned URL of the object, valid for the configured expiry.
    pub fn presign_get(&self, key: &str) -> url::Url {
        self.inner
            .bucket
            .get_object(Some(&self.inner.creds), &self.full(key))
            .sign(self.inner.presign_expiry)
    }

    /// Delete an object (one already gone is not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full(key);
        let url = || {
            self.inner
                .bucket
                .delete_object(Some(&self.inner.creds), &full)
                .sign(SIGNED_FOR)
        };
        match self
            .call(&format!("DELETE {full}"), Method::DELETE, url, &[], Bytes::new())
            .await
        {
            Ok(_) | Err(Error::ObjectStore(ObjectStoreError::Refused { status: 404, .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Start a multipart upload; its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let full = self.full(key);
        let what = format!("CreateMultipartUpload {full}");
        let url = || {
            let mut a = self
                .inner
                .bucket
                .create_multipart_upload(Some(&self.inner.creds), &full);
            for (k, v) in &self.inner.new_object_headers {
                a.headers_mut().insert(*k, v.clone());
            }
            a.sign(SIGNED_FOR)
        };
        let headers = &self.inner.new_object_headers;
        let (_, body) = self.call(&what, Method::POST, url, headers, Bytes::new()).await?;
        let text = std::str::from_utf8(&body).map_err(|_| malformed(&what))?;
        let parsed = CreateMultipartUpload::parse_response(text).map_err(|_| malformed(&what))?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Store part `n` (1-based) of a multipart upload; its ETag.
    pub async fn upload_part(&self, key: &str, upload_id: &str, n: u16, data: Bytes) -> Result<String> {
        let full = self.full(key);
        let what = format!("UploadPart {n} of {full}");
        let url = || {
            self.inner
                .bucket
                .upload_part(Some(&self.inner.creds), &full, n, upload_id)
                .sign(SIGNED_FOR)
        };
        let (parts, _) = self.call(&what, Method::PUT, url, &[], data).await?;
        parts
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| malformed(&what))
    }

    /// Complete a multipart upload from its parts' ETags, in order: the object appears at its
    /// key, made of the parts where they are (no copy).
    pub async fn complete_multipart(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<()> {
        let full = self.full(key);
        let what = format!("CompleteMultipartUpload {full}");
        let action = self.inner.bucket.complete_multipart_upload(
            Some(&self.inner.creds),
            &full,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = Bytes::from(action.body());
        let (_, answer) = self.call(&what, Method::POST, || url.clone(), &[], body).await?;
        // S3 may answer 200 with an error document when completing fails late.
        if answer.windows(7).any(|w| w == b"<Error>") {
            return Err(refused(&what, StatusCode::OK, &answer));
        }
        Ok(())
    }

    /// Abort a multipart upload, deleting its parts (one already gone is not an error).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let full = self.full(key);
        let url = || {
            self.inner
                .bucket
                .abort_multipart_upload(Some(&self.inner.creds), &full, upload_id)
                .sign(SIGNED_FOR)
        };
        let what = format!("AbortMultipartUpload {full}");
        match self.call(&what, Method::DELETE, url, &[], Bytes::new()).await {
            Ok(_) | Err(Error::ObjectStore(ObjectStoreError::Refused { status: 404, .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix` (below the root directory).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let full = self.full(prefix);
        let what = format!("ListObjectsV2 {full}");
        let now = jiff::Timestamp::now();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let url = || {
                let mut a = ListObjectsV2::new(&self.inner.bucket, Some(&self.inner.creds));
                a.with_prefix(Cow::Borrowed(full.as_str()));
                a.with_max_keys(1000);
                if let Some(t) = &token {
                    a.with_continuation_token(t.clone());
                }
                a.sign(SIGNED_FOR)
            };
            let (_, body) = self.call(&what, Method::GET, url, &[], Bytes::new()).await?;
            let text = std::str::from_utf8(&body).map_err(|_| malformed(&what))?;
            let page = ListObjectsV2::parse_response(text).map_err(|_| malformed(&what))?;
            for c in page.contents {
                let Some(key) = self.relative(&c.key) else { continue };
                let age_secs = c
                    .last_modified
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| now.duration_since(t).as_secs().max(0) as u64);
                out.push(Listed {
                    key: key.to_owned(),
                    size: c.size.unwrap_or(0),
                    age_secs,
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Every unfinished multipart upload under `prefix` (below the root directory).
    pub async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let full = self.full(prefix);
        let what = format!("ListMultipartUploads {full}");
        let now = jiff::Timestamp::now();
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            // rusty-s3 has no action for ListMultipartUploads: sign the request with its signer.
            let url = || {
                let mut query = vec![("uploads", ""), ("prefix", full.as_str())];
                if !key_marker.is_empty() {
                    query.push(("key-marker", key_marker.as_str()));
                    query.push(("upload-id-marker", id_marker.as_str()));
                }
                // The signer takes the parameters in canonical (sorted) order.
                query.sort_unstable();
                rusty_s3::signing::sign(
                    &jiff::Timestamp::now(),
                    rusty_s3::Method::Get,
                    self.inner.bucket.base_url().clone(),
                    self.inner.creds.key(),
                    self.inner.creds.secret(),
                    self.inner.creds.token(),
                    self.inner.bucket.region(),
                    SIGNED_FOR.as_secs(),
                    query.into_iter(),
                    std::iter::empty(),
                )
            };
            let (_, body) = self.call(&what, Method::GET, url, &[], Bytes::new()).await?;
            let text = std::str::from_utf8(&body).map_err(|_| malformed(&what))?;
            let page = super::xml::uploads(text).ok_or_else(|| malformed(&what))?;
            for upload in page.uploads {
                let Some(rel) = self.relative(&upload.key) else {
                    continue;
                };
                let age_secs = upload
                    .initiated
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| now.duration_since(t).as_secs().max(0) as u64);
                out.push(PendingUpload {
                    key: rel.to_owned(),
                    upload_id: upload.upload_id,
                    age_secs,
                });
            }
            let next = (page.next_key.unwrap_or_default(), page.next_id.unwrap_or_default());
            if page.truncated != Some(true) || next.0.is_empty() || next.0 == key_marker && next.1 == id_marker {
                return Ok(out);
            }
            (key_marker, id_marker) = next;
        }
    }
}

/// The TLS side of the connector: the system's roots (the built-in Mozilla roots when it has
/// none), or no verification at all with `skip_verify`.
fn tls(skip_verify: bool) -> Result<hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>> {
    if skip_verify {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::ObjectStore(ObjectStoreError::Settings(format!("TLS: {e}"))))?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(crate::tls_verify::AnyCertificate(provider)))
            .with_no_client_auth();
        return Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config));
    }
    Ok(match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    })
}

fn unreachable(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::ObjectStore(ObjectStoreError::Unavailable(format!("{what}: {e}")))
}

fn malformed(what: &str) -> Error {
    Error::ObjectStore(ObjectStoreError::Failed(format!(
        "{what}: the store's answer could not be read"
    )))
}

/// The store's refusal, with its error code and message when the body has them.
fn refused(what: &str, status: StatusCode, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(body);
    let (code, message) = super::xml::error(&text);
    let mut detail = format!("{what}: {status}");
    if !code.is_empty() {
        detail.push_str(&format!(" {code}"));
    }
    if !message.is_empty() {
        detail.push_str(&format!(": {message}"));
    }
    if status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE || code == "SlowDown" {
        return Error::ObjectStore(ObjectStoreError::Unavailable(detail));
    }
    Error::ObjectStore(ObjectStoreError::Refused {
        status: status.as_u16(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::settings::Encryption;

    #[test]
    fn new_objects_carry_class_and_encryption_sorted_for_signing() {
        let s = |encryption, class: Option<&str>| S3Settings {
            encryption,
            storage_class: class.map(str::to_owned),
            ..S3Settings::default()
        };
        assert!(new_object_headers(&s(None, None)).is_empty());
        assert_eq!(
            new_object_headers(&s(Some(Encryption::Aes256), None)),
            [("x-amz-server-side-encryption", "AES256".to_owned())]
        );
        assert_eq!(
            new_object_headers(&s(Some(Encryption::Kms("alias/registry".into())), Some("STANDARD_IA"))),
            [
                ("x-amz-server-side-encryption", "aws:kms".to_owned()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id",
                    "alias/registry".to_owned()
                ),
                ("x-amz-storage-class", "STANDARD_IA".to_owned()),
            ]
        );
    }
}
