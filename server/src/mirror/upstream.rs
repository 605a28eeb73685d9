//! The client of one upstream registry, for the pull-through cache: manifests and blobs (ranged,
//! redirects followed), the token dance of Docker and OCI registries, rate limits and outages.
//! Beside it: `upstream_auth` (challenges, the token cache), `upstream_tls` (the TLS client
//! configuration) and `upstream_http` (header parsing, names, `Location`s and other pure pieces).
//!
//! Failing fast: after a 429 no request is sent to the upstream until its `Retry-After` has
//! passed (1 s without one, at most an hour); after a connection error, none for 1 s
//! ([`CONNECT_BACKOFF`]), so a pull storm against an upstream that is down does not become a
//! storm of connection attempts. Both answer [`UpstreamError::Unavailable`] with `retry_after`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use http::header::{USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use parking_lot::Mutex;

use berth_engine::error_chain;

use super::upstream_auth::{self as auth, Auth, TokenCache};
use super::upstream_http::{
    clock, content_range, default_port, port_of, resolve, retry_after, show, valid_reference, valid_repo,
};
use super::upstream_tls::{HttpsClient, https_client};

/// Largest manifest accepted from an upstream.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// No request to an upstream for this long after a connection to it failed.
pub const CONNECT_BACKOFF: Duration = Duration::from_secs(1);
const RATE_LIMIT_DEFAULT: Duration = Duration::from_secs(1);
const MAX_TOKEN_ANSWER: usize = 1 << 20;
const TOKEN_SCOPES: usize = 1024;
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws, \
    application/vnd.docker.distribution.manifest.v1+json";

/// Where an upstream is and how to talk to it.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// The upstream's name, for logs, metrics and errors.
    pub name: String,
    /// `http://` or `https://` and the authority, no path: `https://registry.example`.
    pub url: String,
    /// User for the token service (or for Basic), with `password`.
    pub username: Option<String>,
    /// Never logged, never in `Debug` output.
    pub password: Option<String>,
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate (the handshake's signatures are still checked). `ca_file` is then
    /// not used.
    pub insecure: bool,
    /// Limit on connecting plus receiving the answer's headers, per request; also the longest
    /// pause allowed between two pieces of a body.
    pub timeout: Duration,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A manifest (or only its headers, for HEAD) from an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    /// `Content-Type` without parameters (for a GET without one: the body's `mediaType`).
    pub media_type: String,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
    /// The manifest; empty for HEAD.
    pub bytes: Bytes,
}

/// A blob body as it arrives.
pub type BlobBody = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// A blob (or its tail) from an upstream.
pub struct UpstreamBlob {
    /// The whole blob's size, when the upstream says.
    pub total: Option<u64>,
    /// The offset of the body's first byte: the `from` asked for, or 0 when the upstream ignored
    /// the range.
    pub start: u64,
    /// The bytes. A pause of more than the timeout between two pieces ends it with an error of
    /// kind [`io::ErrorKind::TimedOut`].
    pub body: BlobBody,
}

impl fmt::Debug for UpstreamBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBlob")
            .field("total", &self.total)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// Why an upstream call failed. The messages name the upstream and its host.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    /// 404: the manifest or blob is not known upstream.
    NotFound,
    /// 401 or 403 after authenticating: wrong credentials, or no access.
    Denied(String),
    /// Cannot connect, no answer in time, 5xx, 429, or failing fast after one of those.
    Unavailable {
        /// What happened.
        reason: String,
        /// When to try again, when known.
        retry_after: Option<Duration>,
    },
    /// An answer that cannot be used (bad challenge, manifest too large, wrong Content-Range…),
    /// or a name that cannot be asked for.
    Invalid(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::NotFound => f.write_str("not found upstream"),
            UpstreamError::Denied(m) | UpstreamError::Invalid(m) => f.write_str(m),
            UpstreamError::Unavailable { reason, retry_after } => {
                f.write_str(reason)?;
                match retry_after {
                    Some(d) => write!(f, " (retry in {} s)", d.as_secs_f64().ceil()),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for UpstreamError {}

/// Counters of one upstream, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// HTTP requests sent (token requests and redirects included).
    pub requests: u64,
    /// Token requests among them.
    pub token_fetches: u64,
    /// Manifest and blob body bytes received.
    pub bytes_in: u64,
    /// Calls that failed (a 404 is an answer, not an error), and blob bodies that broke off.
    pub errors: u64,
    /// 429 answers.
    pub rate_limited: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    token_fetches: AtomicU64,
    bytes_in: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// The Authorization header a request was sent with, and its token for Bearer.
#[derive(Clone)]
struct Credential {
    header: HeaderValue,
    bearer: Option<String>,
}

/// One upstream registry. Shared behind an `Arc`; every call may run concurrently.
pub struct Upstream {
    settings: UpstreamSettings,
    /// `upstream "<name>" (<host[:port]>)`, the start of every message.
    label: Arc<str>,
    scheme: String,
    authority: http::uri::Authority,
    host: String,
    port: u16,
    basic: Option<HeaderValue>,
    client: HttpsClient,
    tokens: TokenCache,
    /// The `service` of the last Bearer challenge: with it a cached token is sent up front.
    service: Mutex<Option<String>>,
    /// A Basic challenge was answered: credentials are sent up front from then on.
    basic_up_front: AtomicBool,
    /// After a 429: until when (monotonic, and wall clock for messages).
    rate_limited: Mutex<Option<(Instant, SystemTime)>>,
    /// After a connection error: until when.
    backoff: Mutex<Option<Instant>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `settings`. The error names the upstream and what is wrong (URL, CA file).
    pub fn new(settings: UpstreamSettings) -> Result<Upstream, String> {
        let named = format!("upstream {:?}", settings.name);
        let url = settings.url.trim_end_matches('/');
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{named}: url {url:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ => return Err(format!("{named}: url {url:?} must start with http:// or https://")),
        };
        let (Some(authority), Some(host)) = (uri.authority().cloned(), uri.host()) else {
            return Err(format!("{named}: url {url:?} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "{named}: url {url:?} holds credentials; set username and password"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{named}: url {url:?} must not have a path or query"));
        }
        let label: Arc<str> = format!("{named} ({authority})").into();
        let basic = match (&settings.username, &settings.password) {
            (None, None) => None,
            (None, Some(_)) => return Err(format!("{label}: a password without a username")),
            (Some(u), p) => {
                if u.is_empty() || u.contains(':') {
                    return Err(format!("{label}: the username must be non-empty and hold no ':'"));
                }
                let mut h = HeaderValue::from_str(&auth::basic(u, p.as_deref().unwrap_or("")))
                    .map_err(|_| format!("{label}: the username or password holds control characters"))?;
                h.set_sensitive(true);
                Some(h)
            }
        };
        if settings.timeout.is_zero() {
            return Err(format!("{label}: the timeout must be more than 0"));
        }
        let client = https_client(&settings, &label)?;
        Ok(Upstream {
            scheme: scheme.to_owned(),
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or_else(|| default_port(scheme)),
            authority,
            label,
            basic,
            client,
            tokens: TokenCache::new(TOKEN_SCOPES),
            service: Mutex::new(None),
            basic_up_front: AtomicBool::new(false),
            rate_limited: Mutex::new(None),
            backoff: Mutex::new(None),
            counters: Arc::default(),
            settings,
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The counters so far.
    pub fn stats(&self) -> UpstreamStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UpstreamStats {
            requests: get(&c.requests),
            token_fetches: get(&c.token_fetches),
            bytes_in: get(&c.bytes_in),
            errors: get(&c.errors),
            rate_limited: get(&c.rate_limited),
        }
    }

    /// GET (HEAD when `head`) `/v2/<repo>/manifests/<reference>`, accepting OCI and Docker
    /// manifests and indexes. A body over [`MAX_MANIFEST`] is [`UpstreamError::Invalid`]; for
    /// HEAD `bytes` is empty.
    pub async fn manifest(&self, repo: &str, reference: &str, head: bool) -> Result<UpstreamManifest, UpstreamError> {
        let r = self.manifest_inner(repo, reference, head).await;
        self.tally(r)
    }

    /// GET `/v2/<repo>/blobs/<digest>`, from byte `from` on (`Range: bytes=<from>-` when more
    /// than 0). Redirects are followed, up to [`MAX_REDIRECTS`]; the Authorization header goes
    /// only to the upstream's own scheme, host and port. A 206 must start at `from`; a 200 to a
    /// ranged request starts at 0 (`start`), and the caller skips.
    pub async fn blob(&self, repo: &str, digest: &str, from: u64) -> Result<UpstreamBlob, UpstreamError> {
        let r = self.blob_inner(repo, digest, from).await;
        self.tally(r)
    }

    /// HEAD `/v2/<repo>/blobs/<digest>`: its size when it exists, `None` on 404.
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<Option<u64>, UpstreamError> {
        let r = self.blob_exists_inner(repo, digest).await;
        self.tally(r)
    }

    fn tally<T>(&self, r: Result<T, UpstreamError>) -> Result<T, UpstreamError> {
        if let Err(e) = &r
            && !matches!(e, UpstreamError::NotFound)
        {
            bump(&self.counters.errors, 1);
            tracing::debug!(upstream = %self.settings.name, error = %e, "upstream call failed");
        }
        r
    }

    fn unavailable(&self, reason: impl fmt::Display, retry_after: Option<Duration>) -> UpstreamError {
        UpstreamError::Unavailable {
            reason: format!("{}: {reason}", self.label),
            retry_after,
        }
    }

    fn denied(&self, why: impl fmt::Display) -> UpstreamError {
        UpstreamError::Denied(format!("{}: {why}", self.label))
    }

    fn invalid(&self, why: impl fmt::Display) -> UpstreamError {
        UpstreamError::Invalid(format!("{}: {why}", self.label))
    }

    fn path(&self, repo: &str, kind: &str, reference: &str) -> Result<Uri, UpstreamError> {
        if !valid_repo(repo) {
            return Err(self.invalid(format!("{repo:?} is not a repository name that can be asked for")));
        }
        if !valid_reference(reference) {
            return Err(self.invalid(format!("{reference:?} is not a reference that can be asked for")));
        }
        let text = format!("{}://{}/v2/{repo}/{kind}/{reference}", self.scheme, self.authority);
        text.parse().map_err(|e| self.invalid(format!("{text}: {e}")))
    }

    async fn manifest_inner(&self, repo: &str, reference: &str, head: bool) -> Result<UpstreamManifest, UpstreamError> {
        let uri = self.path(repo, "manifests", reference)?;
        let method = if head { Method::HEAD } else { Method::GET };
        let accept = [(ACCEPT, HeaderValue::from_static(MANIFEST_TYPES))];
        let resp = self.send(&method, repo, uri, &accept).await?;
        self.expect(resp.status(), &format!("manifest {repo}:{reference}"))?;
        let h = resp.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let digest = text("docker-content-digest")
            .filter(|d| !d.is_empty())
            .map(str::to_owned);
        let content_type = text(CONTENT_TYPE.as_str()).map(|t| t.split(';').next().unwrap_or("").trim().to_owned());
        let too_big = || {
            self.invalid(format!(
                "manifest {repo}:{reference} is larger than {MAX_MANIFEST} bytes"
            ))
        };
        if text(CONTENT_LENGTH.as_str())
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l > MAX_MANIFEST as u64)
        {
            return Err(too_big());
        }
        let bytes = if head {
            Bytes::new()
        } else {
            self.read(resp.into_body(), MAX_MANIFEST, true)
                .await?
                .ok_or_else(too_big)?
        };
        let media_type = match content_type.filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .ok_or_else(|| self.invalid(format!("manifest {repo}:{reference} came without a media type")))?,
        };
        Ok(UpstreamManifest {
            media_type,
            digest,
            bytes,
        })
    }

    async fn blob_inner(&self, repo: &str, digest: &str, from: u64) -> Result<UpstreamBlob, UpstreamError> {
        let uri = self.path(repo, "blobs", digest)?;
        let mut range = Vec::new();
        if from > 0 {
            let v = HeaderValue::from_str(&format!("bytes={from}-")).map_err(|e| self.invalid(e))?;
            range.push((RANGE, v));
        }
        let resp = self.send(&Method::GET, repo, uri, &range).await?;
        let what = format!("blob {repo}@{digest}");
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(self.invalid(format!("{what}: the upstream has no byte {from} (416)")));
        }
        self.expect(status, &what)?;
        let h = resp.headers();
        let (start, total) = if status == StatusCode::PARTIAL_CONTENT {
            let cr = h.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match content_range(cr) {
                Some((first, total)) if first == from => (first, total),
                _ => return Err(self.invalid(format!("{what}: 206 with Content-Range {cr:?} for bytes={from}-"))),
            }
        } else {
            let len = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
            (0, len)
        };
        let state = BodyState {
            body: resp.into_body(),
            counters: self.counters.clone(),
            label: self.label.clone(),
            stall: self.settings.timeout,
        };
        Ok(UpstreamBlob {
            total,
            start,
            body: Box::pin(futures_util::stream::unfold(Some(state), next_piece)),
        })
    }

    async fn blob_exists_inner(&self, repo: &str, digest: &str) -> Result<Option<u64>, UpstreamError> {
        let uri = self.path(repo, "blobs", digest)?;
        let resp = self.send(&Method::HEAD, repo, uri, &[]).await?;
        let what = format!("blob {repo}@{digest}");
        match self.expect(resp.status(), &what) {
            Err(UpstreamError::NotFound) => return Ok(None),
            r => r?,
        }
        let len = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        len.map(Some)
            .ok_or_else(|| self.invalid(format!("{what}: HEAD answered without a Content-Length")))
    }

    /// 2xx is fine; 404 is [`UpstreamError::NotFound`]; 401 and 403 are denials; the rest
    /// (5xx and 429 were taken care of by `exchange`) cannot be used.
    fn expect(&self, status: StatusCode, what: &str) -> Result<(), UpstreamError> {
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(UpstreamError::NotFound),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.denied(format!("{what}: {status}"))),
            s => Err(self.invalid(format!("{what}: unexpected {s}"))),
        }
    }

    /// Read a whole body of at most `max` bytes (`None` when larger); `count`: it is manifest
    /// data for `bytes_in`.
    async fn read(&self, mut body: Incoming, max: usize, count: bool) -> Result<Option<Bytes>, UpstreamError> {
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(self.settings.timeout, body.frame()).await {
                Err(_) => return Err(self.unavailable("the answer's body stalled", None)),
                Ok(None) => return Ok(Some(buf.freeze())),
                Ok(Some(Err(e))) => {
                    return Err(self.unavailable(format!("reading the answer: {}", error_chain(&e)), None));
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                if count {
                    bump(&self.counters.bytes_in, data.len() as u64);
                }
                if buf.len() + data.len() > max {
                    return Ok(None);
                }
                buf.extend_from_slice(&data);
            }
        }
    }

    /// The credential to send before any challenge: Basic once a Basic challenge was seen, else
    /// a cached token for `repository:<repo>:pull`.
    fn up_front(&self, repo: &str) -> Option<Credential> {
        if self.basic_up_front.load(Ordering::Relaxed) {
            return self.basic.clone().map(|header| Credential { header, bearer: None });
        }
        let service = self.service.lock().clone()?;
        let token = self.tokens.cached(&service, &format!("repository:{repo}:pull"))?;
        Some(Credential {
            header: bearer(&token)?,
            bearer: Some(token),
        })
    }

    /// Send a request to the upstream, with the auth dance and redirects.
    async fn send(
        &self,
        method: &Method,
        repo: &str,
        uri: Uri,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>, UpstreamError> {
        let first = self.up_front(repo);
        let mut resp = self
            .exchange(method, &uri, extra, first.as_ref().map(|c| &c.header))
            .await?;
        let mut sent = first.as_ref().map(|c| c.header.clone());
        if resp.status() == StatusCode::UNAUTHORIZED {
            let values: Vec<&str> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let challenge = auth::choose(&values).map_err(|e| self.invalid(format!("401 for {}: {e}", uri.path())))?;
            let header = self.answer(challenge, repo, first.as_ref()).await?;
            resp = self.exchange(method, &uri, extra, Some(&header)).await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(self.denied(format!("{} was refused after authenticating (401)", uri.path())));
            }
            sent = Some(header);
        }
        let mut at = uri;
        for _ in 0..MAX_REDIRECTS {
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            let Some(next) = resolve(&at, location) else {
                return Err(self.invalid(format!("{} redirected to {location:?}", show(&at))));
            };
            let own = next.scheme_str() == Some(self.scheme.as_str())
                && next.host().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
                && port_of(&next) == self.port;
            tracing::debug!(upstream = %self.settings.name, from = %show(&at), to = %show(&next), "following a redirect");
            resp = self
                .exchange(method, &next, extra, sent.as_ref().filter(|_| own))
                .await?;
            at = next;
        }
        if matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Err(self.invalid(format!(
                "more than {MAX_REDIRECTS} redirects, the last from {}",
                show(&at)
            )));
        }
        Ok(resp)
    }

    /// The Authorization header that answers `challenge`; `sent` is what the refused request
    /// carried.
    async fn answer(
        &self,
        challenge: Auth,
        repo: &str,
        sent: Option<&Credential>,
    ) -> Result<HeaderValue, UpstreamError> {
        match challenge {
            Auth::Bearer { realm, service, scope } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                let service = service.unwrap_or_default();
                *self.service.lock() = Some(service.clone());
                let stale = sent.and_then(|c| c.bearer.as_deref());
                let token = self
                    .tokens
                    .get(&service, &scope, stale, || self.fetch_token(&realm, &service, &scope))
                    .await?;
                bearer(&token).ok_or_else(|| self.invalid("the token cannot be sent in a header"))
            }
            Auth::Basic => {
                let Some(basic) = &self.basic else {
                    return Err(self.denied("asks for Basic credentials and none are configured"));
                };
                if sent.is_some_and(|c| c.bearer.is_none()) {
                    return Err(self.denied("refused the configured credentials (Basic)"));
                }
                self.basic_up_front.store(true, Ordering::Relaxed);
                Ok(basic.clone())
            }
        }
    }

    async fn fetch_token(&self, realm: &str, service: &str, scope: &str) -> Result<auth::Token, UpstreamError> {
        let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        if !service.is_empty() {
            url.push_str(&format!("service={}&", enc(service)));
        }
        url.push_str(&format!("scope={}", enc(scope)));
        let uri: Uri = url
            .parse()
            .ok()
            .filter(|u: &Uri| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
            .ok_or_else(|| self.invalid(format!("the token realm {realm:?} is not an http(s) URL")))?;
        bump(&self.counters.token_fetches, 1);
        if self.basic.is_some() && self.scheme == "https" && uri.scheme_str() == Some("http") {
            tracing::warn!(upstream = %self.settings.name, realm = %show(&uri), "sending the upstream's credentials to its token service over plain http, as its challenge names it");
        }
        tracing::debug!(upstream = %self.settings.name, realm = %show(&uri), scope, "fetching a token");
        let resp = self.exchange(&Method::GET, &uri, &[], self.basic.as_ref()).await?;
        let who = if self.basic.is_some() {
            "the configured credentials"
        } else {
            "an anonymous token"
        };
        match resp.status() {
            s if s.is_success() => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(self.denied(format!(
                    "the token service {} refused {who} for {scope} ({s})",
                    show(&uri)
                )));
            }
            s => return Err(self.invalid(format!("the token service {} answered {s}", show(&uri)))),
        }
        let body = self.read(resp.into_body(), MAX_TOKEN_ANSWER, false).await?;
        let body = body.ok_or_else(|| self.invalid("the token service's answer is larger than 1 MiB"))?;
        auth::parse_token(&body).map_err(|e| self.invalid(format!("token service {}: {e}", show(&uri))))
    }

    /// One HTTP request, no auth dance: fails fast while rate-limited or backing off, counts,
    /// limits connect + headers to the timeout, and turns 429 and 5xx into
    /// [`UpstreamError::Unavailable`].
    async fn exchange(
        &self,
        method: &Method,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let now = Instant::now();
        if let Some((until, wall)) = *self.rate_limited.lock()
            && until > now
        {
            let why = format!("rate-limited until {}; no request sent", clock(wall));
            return Err(self.unavailable(why, Some(until - now)));
        }
        if let Some(until) = *self.backoff.lock()
            && until > now
        {
            let why = "a connection failed less than 1 s ago; no request sent";
            return Err(self.unavailable(why, Some(until - now)));
        }
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .header(USER_AGENT, concat!("berth/", env!("CARGO_PKG_VERSION")));
        for (name, value) in extra {
            req = req.header(name, value);
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req.body(Empty::new()).map_err(|e| self.invalid(e))?;
        bump(&self.counters.requests, 1);
        let resp = match tokio::time::timeout(self.settings.timeout, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if e.is_connect() {
                    *self.backoff.lock() = Some(Instant::now() + CONNECT_BACKOFF);
                }
                return Err(self.unavailable(format!("{method} {}: {}", show(uri), error_chain(&e)), None));
            }
            Err(_) => {
                let secs = self.settings.timeout.as_secs_f64();
                return Err(self.unavailable(format!("{method} {}: no answer within {secs} s", show(uri)), None));
            }
        };
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            bump(&self.counters.rate_limited, 1);
            let retry = retry_after(resp.headers());
            let block = retry.unwrap_or(RATE_LIMIT_DEFAULT);
            let wall = SystemTime::now() + block;
            *self.rate_limited.lock() = Some((Instant::now() + block, wall));
            tracing::warn!(upstream = %self.settings.name, until = %clock(wall), "the upstream answered 429 Too Many Requests");
            return Err(self.unavailable(
                format!("429 Too Many Requests; rate-limited until {}", clock(wall)),
                retry,
            ));
        }
        if status.is_server_error() {
            let retry = retry_after(resp.headers());
            return Err(self.unavailable(format!("{method} {}: {status}", show(uri)), retry));
        }
        Ok(resp)
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut h = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    h.set_sensitive(true);
    Some(h)
}

struct BodyState {
    body: Incoming,
    counters: Arc<Counters>,
    label: Arc<str>,
    stall: Duration,
}

/// The next piece of a blob body: bytes are counted as they arrive; a stall or a broken
/// connection ends the stream with an error.
async fn next_piece(state: Option<BodyState>) -> Option<(Result<Bytes, io::Error>, Option<BodyState>)> {
    let mut s = state?;
    loop {
        let fail = |kind, text: String| {
            bump(&s.counters.errors, 1);
            Some((Err(io::Error::new(kind, format!("{}: {text}", s.label))), None))
        };
        match tokio::time::timeout(s.stall, s.body.frame()).await {
            Err(_) => {
                let text = format!("the blob body stalled for more than {} s", s.stall.as_secs_f64());
                return fail(io::ErrorKind::TimedOut, text);
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                return fail(
                    io::ErrorKind::Other,
                    format!("the blob body broke off: {}", error_chain(&e)),
                );
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    bump(&s.counters.bytes_in, data.len() as u64);
                    return Some((Ok(data), Some(s)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
