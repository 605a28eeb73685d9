//! The client of one upstream registry, for the pull-through cache: manifests and blobs (ranged,
//! redirects followed), the token dance of Docker and OCI registries (challenges and the token cache
//! are in `upstream_auth`),
//! rate limits and outages.
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use http::header::{RETRY_AFTER, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::upstream_auth::{self as auth, Auth, TokenCache};

/// Largest manifest accepted from an upstream.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// No request to an upstream for this long after a connection to it failed.
pub const CONNECT_BACKOFF: Duration = Duration::from_secs(1);
const RATE_LIMIT_DEFAULT: Duration = Duration::from_secs(1);
const RATE_LIMIT_MAX: Duration = Duration::from_secs(3600);
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

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

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

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

fn port_of(uri: &Uri) -> u16 {
    uri.port_u16()
        .unwrap_or_else(|| default_port(uri.scheme_str().unwrap_or("")))
}

/// Accepts any certificate; the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration: any certificate with `insecure`; else the system's roots (the
/// built-in Mozilla roots when it has none) plus those of `ca_file`.
fn tls_config(s: &UpstreamSettings, label: &str) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{label}: TLS: {e}"))?;
    if s.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if roots.add_parsable_certificates(found.certs).0 == 0 {
        tracing::info!(errors = ?found.errors, "no system root certificates; using the built-in Mozilla roots for {label}");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &s.ca_file {
        let at = format!("{label}: CA file {}", path.display());
        let list = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{at}: cannot read it: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{at}: not PEM certificates: {e}"))?;
        if list.is_empty() {
            return Err(format!(
                "{at}: holds no certificate (expected -----BEGIN CERTIFICATE-----)"
            ));
        }
        for c in list {
            roots
                .add(c)
                .map_err(|e| format!("{at}: a certificate cannot be a root: {e}"))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A repository name that can go into a path: lower-case letters, digits, `._-`, components
/// separated by `/`, each starting with a letter or digit (so no `.` or `..`).
fn valid_repo(repo: &str) -> bool {
    repo.split('/').all(|c| {
        c.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    })
}

/// A tag or digest: letters, digits, `._:+=-`, starting with a letter, digit or `_`.
fn valid_reference(r: &str) -> bool {
    r.len() <= 256
        && r.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:+=-".contains(&b))
}

/// `Retry-After` as seconds or an HTTP date, at most an hour.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => http_date(v)?.duration_since(SystemTime::now()).unwrap_or_default(),
    };
    Some(d.min(RATE_LIMIT_MAX))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP senders must use.
fn http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.get(5..)?.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if s.get(3..5)? != ", " || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let m = MONTHS.iter().position(|&n| n == month)? as i64 + 1;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, se] = hms[..] else { return None };
    if !(1..=31).contains(&d) || !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (years start in March here).
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `HH:MM:SS UTC` of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// `bytes <first>-<last>/<total or *>`: (first, total).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    let total = match total {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > last)?),
    };
    (first <= last).then_some((first, total))
}

/// Where a `Location` points, relative to the URL that answered.
fn resolve(at: &Uri, location: &str) -> Option<Uri> {
    let scheme_end = location.find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)));
    let text = if scheme_end.is_some_and(|e| e > 0 && location[e..].starts_with(':')) {
        // Absolute (RFC 3986: a first segment with a colon is a scheme).
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", at.scheme_str()?)
    } else {
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let dir = &at.path()[..=at.path().rfind('/')?];
            format!("{dir}{location}")
        };
        format!("{}://{}{path}", at.scheme_str()?, at.authority()?)
    };
    let uri: Uri = text.parse().ok()?;
    (matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()).then_some(uri)
}

/// A host and path for logs: never the query, which holds presigned signatures.
fn show(uri: &Uri) -> String {
    format!("{}{}", uri.authority().map_or("", |a| a.as_str()), uri.path())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        let tls = tls_config(&settings, &label)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
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
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use futures_util::StreamExt;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const DIGEST: &str = "sha256:0123abcd";
    const PASSWORD: &str = "hunter2-very-secret";

    fn blob() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    type Body = UnsyncBoxBody<Bytes, Infallible>;

    fn full(b: impl Into<Bytes>) -> Body {
        Full::new(b.into()).boxed_unsync()
    }

    /// Pieces of `size` bytes, `count` of them, then (with `stall`) a pause of 10 s.
    fn pieces(size: usize, count: usize, stall: bool) -> Body {
        let s = futures_util::stream::unfold(0, move |n| async move {
            if n == count {
                if !stall {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; size]))), n + 1))
        });
        StreamBody::new(s).boxed_unsync()
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
        let mut r = Response::builder().status(status);
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.body(body).unwrap()
    }

    /// An upstream: a registry (Bearer tokens from its own `/token`, or Basic only) and, on a
    /// second port, another host that redirected blob requests land on.
    struct Mock {
        basic_only: bool,
        tls: bool,
        expires_in: Option<u64>,
        port: u16,
        other_port: u16,
        token_hits: AtomicUsize,
        v2_hits: AtomicUsize,
        other_hits: AtomicUsize,
        other_with_auth: AtomicUsize,
        issued: parking_lot::Mutex<Vec<String>>,
        token_request: parking_lot::Mutex<(String, Option<String>)>,
    }

    fn count(a: &AtomicUsize) -> usize {
        a.load(Ordering::SeqCst)
    }

    impl Mock {
        async fn start(basic_only: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Arc<Mock> {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let o = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mock = Arc::new(Mock {
                basic_only,
                tls: tls.is_some(),
                expires_in: Some(300),
                port: l.local_addr().unwrap().port(),
                other_port: o.local_addr().unwrap().port(),
                token_hits: AtomicUsize::new(0),
                v2_hits: AtomicUsize::new(0),
                other_hits: AtomicUsize::new(0),
                other_with_auth: AtomicUsize::new(0),
                issued: Default::default(),
                token_request: Default::default(),
            });
            tokio::spawn(accept(l, mock.clone(), false, tls.map(tokio_rustls::TlsAcceptor::from)));
            tokio::spawn(accept(o, mock.clone(), true, None));
            mock
        }

        fn url(&self) -> String {
            format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
        }

        fn token(&self, req: &Request<Incoming>, authz: Option<String>) -> Response<Body> {
            let n = self.token_hits.fetch_add(1, Ordering::SeqCst) + 1;
            *self.token_request.lock() = (req.uri().query().unwrap_or("").to_owned(), authz.clone());
            if authz.is_some_and(|a| a != auth::basic("alice", PASSWORD)) {
                return reply(401, &[], full("bad credentials"));
            }
            let t = format!("token-{n}");
            self.issued.lock().push(t.clone());
            let body = match self.expires_in {
                Some(e) => serde_json::json!({ "token": t, "expires_in": e }),
                None => serde_json::json!({ "access_token": t }),
            };
            reply(200, &[("content-type", "application/json")], full(body.to_string()))
        }

        async fn handle(&self, req: Request<Incoming>, other: bool) -> Response<Body> {
            let authz = req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
            if other {
                self.other_hits.fetch_add(1, Ordering::SeqCst);
                if authz.is_some() {
                    self.other_with_auth.fetch_add(1, Ordering::SeqCst);
                }
                return serve_blob(&req);
            }
            if req.uri().path() == "/token" {
                return self.token(&req, authz);
            }
            self.v2_hits.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_owned();
            let rest = path.strip_prefix("/v2/").unwrap();
            let (repo, kind, reference) = ["manifests", "blobs"]
                .iter()
                .find_map(|k| {
                    let (repo, r) = rest.split_once(&format!("/{k}/"))?;
                    Some((repo, *k, r))
                })
                .unwrap();
            let ok = if self.basic_only {
                authz.as_deref() == Some(auth::basic("alice", PASSWORD).as_str())
            } else {
                let token = authz.as_deref().and_then(|a| a.strip_prefix("Bearer "));
                token.is_some_and(|t| self.issued.lock().iter().any(|i| i == t))
            };
            if !ok {
                let challenge = if self.basic_only {
                    r#"Basic realm="mock""#.to_owned()
                } else {
                    let scheme = if self.tls { "https" } else { "http" };
                    format!(
                        r#"Bearer realm="{scheme}://127.0.0.1:{}/token",service="mock registry",scope="repository:{repo}:pull""#,
                        self.port
                    )
                };
                return reply(401, &[("www-authenticate", &challenge)], full("{}"));
            }
            let located = |to: String| reply(307, &[("location", &to)], full(""));
            match (repo, kind) {
                ("limited", _) => reply(429, &[("retry-after", "30")], full("slow down")),
                ("broken", _) => reply(503, &[], full("")),
                ("slow", _) => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    reply(200, &[], full(""))
                }
                (_, _) if reference.contains("missing") => reply(404, &[], full("")),
                ("big", "manifests") => reply(200, &[("content-type", OCI)], full(vec![b' '; MAX_MANIFEST + 1])),
                ("bigchunked", "manifests") => reply(200, &[("content-type", OCI)], pieces(65536, 65, false)),
                ("untyped", "manifests") => reply(200, &[], full(MANIFEST)),
                (_, "manifests") => reply(
                    200,
                    &[
                        ("content-type", &format!("{OCI}; charset=utf-8")),
                        ("docker-content-digest", DIGEST),
                    ],
                    full(MANIFEST),
                ),
                ("redirected", _) => located(format!("http://127.0.0.1:{}/data?X-Signature=s", self.other_port)),
                ("samehost", _) => located(format!("/v2/plain/blobs/{reference}")),
                ("loop", _) => located(format!("/v2/loop/blobs/{reference}")),
                ("norange", _) => reply(200, &[], full(blob())),
                ("badrange", _) => reply(206, &[("content-range", "bytes 0-99/100000")], full(vec![0u8; 100])),
                ("stall", _) => reply(200, &[], pieces(1000, 1, true)),
                _ => serve_blob(&req),
            }
        }
    }

    /// The blob, honouring `Range: bytes=<n>-`.
    fn serve_blob(req: &Request<Incoming>) -> Response<Body> {
        let data = blob();
        let range = req.headers().get(RANGE).map(|v| v.to_str().unwrap().to_owned());
        match range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok()) {
            Some(from) => {
                let cr = format!("bytes {from}-{}/{}", data.len() - 1, data.len());
                reply(206, &[("content-range", &cr)], full(data[from..].to_vec()))
            }
            None => reply(200, &[], full(data)),
        }
    }

    async fn accept(l: TcpListener, mock: Arc<Mock>, other: bool, tls: Option<tokio_rustls::TlsAcceptor>) {
        loop {
            let Ok((stream, _)) = l.accept().await else { return };
            let (mock, tls) = (mock.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let mock = mock.clone();
                    async move { Ok::<_, Infallible>(mock.handle(req, other).await) }
                });
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    }

    fn settings(url: String, password: Option<&str>) -> UpstreamSettings {
        UpstreamSettings {
            name: "mock".into(),
            url,
            username: password.map(|_| "alice".into()),
            password: password.map(str::to_owned),
            ca_file: None,
            insecure: false,
            timeout: Duration::from_secs(5),
        }
    }

    async fn collect(mut body: BlobBody) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        while let Some(piece) = body.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn bearer_token_is_fetched_once_and_again_after_expiry() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), Some(PASSWORD))).unwrap();
        for _ in 0..10 {
            let man = up.manifest("library/alpine", "latest", false).await.unwrap();
            assert_eq!((&man.bytes[..], man.media_type.as_str()), (MANIFEST, OCI));
            assert_eq!(man.digest.as_deref(), Some(DIGEST));
        }
        // One 401, one token, then the token up front.
        assert_eq!((count(&m.token_hits), count(&m.v2_hits)), (1, 11));
        let (query, authz) = m.token_request.lock().clone();
        assert_eq!(
            query,
            "service=mock+registry&scope=repository%3Alibrary%2Falpine%3Apull"
        );
        assert_eq!(authz, Some(auth::basic("alice", PASSWORD)));
        let bytes_in = 10 * MANIFEST.len() as u64;
        let expected = UpstreamStats {
            requests: 12,
            token_fetches: 1,
            bytes_in,
            errors: 0,
            rate_limited: 0,
        };
        assert_eq!(up.stats(), expected);
        // A 300 s token is used for 270 s.
        up.tokens.advance(Duration::from_secs(265));
        up.manifest("library/alpine", "latest", false).await.unwrap();
        assert_eq!((count(&m.token_hits), count(&m.v2_hits)), (1, 12));
        up.tokens.advance(Duration::from_secs(10));
        let man = up.manifest("library/alpine", "latest", true).await.unwrap();
        assert!(man.bytes.is_empty() && man.media_type == OCI);
        assert_eq!((count(&m.token_hits), count(&m.v2_hits)), (2, 14));
        // Another repository is another scope.
        up.manifest("other/repo", "v1", false).await.unwrap();
        assert_eq!(count(&m.token_hits), 3);
        assert!(m.token_request.lock().0.ends_with("repository%3Aother%2Frepo%3Apull"));
        // A token the registry no longer takes is replaced, once.
        m.issued.lock().clear();
        up.manifest("other/repo", "v1", false).await.unwrap();
        assert_eq!(count(&m.token_hits), 4);
        assert_eq!(up.stats().token_fetches, 4);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_token_fetch() {
        let m = Mock::start(false, None).await;
        let up = Arc::new(Upstream::new(settings(m.url(), None)).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let up = up.clone();
                tokio::spawn(async move { up.blob("a/b", DIGEST, 0).await.map(|b| b.total) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Some(100_000));
        }
        assert_eq!(count(&m.token_hits), 1);
        // Anonymous: no Authorization on the token request.
        assert_eq!(m.token_request.lock().1, None);
    }

    #[tokio::test]
    async fn wrong_password_is_denied() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), Some("wrong"))).unwrap();
        let e = up.manifest("a/b", "latest", false).await.unwrap_err();
        let UpstreamError::Denied(text) = &e else {
            panic!("{e:?}")
        };
        assert!(text.contains("refused the configured credentials"), "{text}");
        assert!(
            e.to_string()
                .contains(&format!("upstream \"mock\" (127.0.0.1:{})", m.port)),
            "{e}"
        );
        assert_eq!(count(&m.token_hits), 1);
        assert_eq!(up.stats().errors, 1);
    }

    #[tokio::test]
    async fn rate_limit_blocks_until_retry_after() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), None)).unwrap();
        let e = up.manifest("limited", "latest", false).await.unwrap_err();
        let UpstreamError::Unavailable { retry_after, reason } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(30)));
        assert!(reason.contains("429"), "{reason}");
        assert_eq!((count(&m.v2_hits), count(&m.token_hits)), (2, 1));
        // Within the window nothing is sent, for any repository.
        let e = up.blob("plain", DIGEST, 0).await.unwrap_err();
        let UpstreamError::Unavailable { retry_after, reason } = &e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("rate-limited until") && reason.contains("no request sent"),
            "{reason}"
        );
        assert!(retry_after.is_some_and(|d| d > Duration::from_secs(25) && d <= Duration::from_secs(30)));
        assert_eq!((count(&m.v2_hits), count(&m.token_hits)), (2, 1));
        let s = up.stats();
        assert_eq!((s.requests, s.rate_limited, s.errors), (3, 1, 2));
    }

    #[tokio::test]
    async fn server_errors_do_not_block() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), None)).unwrap();
        for hits in [2, 3] {
            let e = up.manifest("broken", "latest", false).await.unwrap_err();
            assert!(
                matches!(&e, UpstreamError::Unavailable { reason, retry_after: None } if reason.contains("503")),
                "{e:?}"
            );
            assert_eq!(count(&m.v2_hits), hits);
        }
    }

    #[tokio::test]
    async fn redirects_drop_authorization_for_other_hosts() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), Some(PASSWORD))).unwrap();
        let data = blob();
        let b = up.blob("redirected", DIGEST, 0).await.unwrap();
        assert_eq!((b.start, b.total), (0, Some(100_000)));
        assert_eq!(collect(b.body).await.unwrap(), data);
        assert_eq!((count(&m.other_hits), count(&m.other_with_auth)), (1, 0));
        // Resuming through the redirect.
        let b = up.blob("redirected", DIGEST, 5000).await.unwrap();
        assert_eq!((b.start, b.total), (5000, Some(100_000)));
        assert_eq!(collect(b.body).await.unwrap(), data[5000..]);
        assert_eq!((count(&m.other_hits), count(&m.other_with_auth)), (2, 0));
        // A redirect to the registry itself keeps the token (without it: 401, Denied).
        let v2 = count(&m.v2_hits);
        let b = up.blob("samehost", DIGEST, 0).await.unwrap();
        assert_eq!(collect(b.body).await.unwrap(), data);
        // 401 (a new scope), with the token, the redirect's target.
        assert_eq!(count(&m.v2_hits), v2 + 3);
        let e = up.blob("loop", DIGEST, 0).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Invalid(t) if t.contains("more than 5 redirects")),
            "{e:?}"
        );
        assert_eq!(up.stats().bytes_in, 2 * 100_000 + 95_000);
    }

    #[tokio::test]
    async fn ranges_and_sizes() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), None)).unwrap();
        let data = blob();
        let b = up.blob("plain", DIGEST, 1000).await.unwrap();
        assert_eq!((b.start, b.total), (1000, Some(100_000)));
        assert_eq!(collect(b.body).await.unwrap(), data[1000..]);
        // The Range ignored: the whole blob from 0, for the caller to skip.
        let b = up.blob("norange", DIGEST, 1000).await.unwrap();
        assert_eq!((b.start, b.total), (0, Some(100_000)));
        assert_eq!(collect(b.body).await.unwrap(), data);
        // A 206 that does not start where asked.
        let e = up.blob("badrange", DIGEST, 1000).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Invalid(t) if t.contains("Content-Range")),
            "{e:?}"
        );
        assert_eq!(up.blob_exists("plain", DIGEST).await.unwrap(), Some(100_000));
        assert_eq!(up.blob_exists("plain", "sha256:missing").await.unwrap(), None);
        assert!(matches!(
            up.blob("plain", "sha256:missing", 0).await,
            Err(UpstreamError::NotFound)
        ));
        assert!(matches!(
            up.manifest("plain", "missing", false).await,
            Err(UpstreamError::NotFound)
        ));
        // NotFound is an answer, not an error; the bad range is one.
        assert_eq!(up.stats().errors, 1);
        // No Content-Type: the body's mediaType.
        assert_eq!(up.manifest("untyped", "latest", false).await.unwrap().media_type, OCI);
    }

    #[tokio::test]
    async fn oversized_manifests_are_invalid() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), None)).unwrap();
        for repo in ["big", "bigchunked"] {
            let e = up.manifest(repo, "latest", false).await.unwrap_err();
            assert!(
                matches!(&e, UpstreamError::Invalid(t) if t.contains("larger than 4194304")),
                "{repo}: {e:?}"
            );
        }
        // The length-less one was read up to the limit, not further.
        let s = up.stats().bytes_in;
        assert!(s > MAX_MANIFEST as u64 && s <= (MAX_MANIFEST + 65536) as u64, "{s}");
    }

    #[tokio::test]
    async fn names_that_could_inject_are_refused_unsent() {
        let m = Mock::start(false, None).await;
        let up = Upstream::new(settings(m.url(), None)).unwrap();
        for (repo, reference) in [
            ("Library/x", "latest"),
            ("a/../b", "latest"),
            ("a//b", "latest"),
            ("/a", "latest"),
            ("a/", "latest"),
            ("", "latest"),
            ("a b", "latest"),
            ("a\r\nx", "latest"),
            ("a?x=1", "latest"),
            ("a", ""),
            ("a", ".."),
            ("a", "la test"),
            ("a", "x/../../y"),
            ("a", "x\r\nHost: evil"),
            ("a", "x?y"),
            ("a", "x#y"),
        ] {
            let e = up.manifest(repo, reference, false).await.unwrap_err();
            assert!(matches!(e, UpstreamError::Invalid(_)), "{repo:?} {reference:?}: {e:?}");
            let e = up.blob(repo, reference, 0).await.unwrap_err();
            assert!(matches!(e, UpstreamError::Invalid(_)), "{repo:?} {reference:?}: {e:?}");
            assert!(matches!(
                up.blob_exists(repo, reference).await,
                Err(UpstreamError::Invalid(_))
            ));
        }
        assert_eq!(up.stats().requests, 0);
        assert_eq!(count(&m.v2_hits), 0);
        assert!(valid_repo("library/alpine") && valid_repo("a.b_c-d/0e") && valid_reference("sha256:abc"));
        assert!(valid_reference("v1.2.3+build_7") && valid_reference("_x") && !valid_reference(".x"));
    }

    #[tokio::test]
    async fn debug_output_hides_the_password_and_tokens() {
        let m = Mock::start(false, None).await;
        let s = settings(m.url(), Some(PASSWORD));
        let text = format!("{s:?}");
        assert!(!text.contains(PASSWORD) && text.contains("<redacted>"), "{text}");
        let up = Upstream::new(s).unwrap();
        up.manifest("a/b", "latest", false).await.unwrap();
        let text = format!("{up:?}");
        assert!(
            !text.contains(PASSWORD) && !text.contains("token-1") && text.contains("mock"),
            "{text}"
        );
        let text = format!("{:#?}", settings(m.url(), None));
        assert!(text.contains("password: None"), "{text}");
    }

    #[tokio::test]
    async fn basic_only_upstream() {
        let m = Mock::start(true, None).await;
        let up = Upstream::new(settings(m.url(), Some(PASSWORD))).unwrap();
        for _ in 0..3 {
            assert_eq!(up.manifest("a/b", "latest", false).await.unwrap().bytes, MANIFEST);
        }
        // One 401, then Basic up front.
        assert_eq!((count(&m.v2_hits), count(&m.token_hits)), (4, 0));
        let anonymous = Upstream::new(settings(m.url(), None)).unwrap();
        let e = anonymous.manifest("a/b", "latest", false).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Denied(t) if t.contains("none are configured")),
            "{e:?}"
        );
        let wrong = Upstream::new(settings(m.url(), Some("wrong"))).unwrap();
        for _ in 0..2 {
            let e = wrong.manifest("a/b", "latest", false).await.unwrap_err();
            assert!(matches!(&e, UpstreamError::Denied(t) if t.contains("refused")), "{e:?}");
        }
        assert_eq!(wrong.stats().requests, 3);
    }

    #[tokio::test]
    async fn timeouts_on_headers_and_stalled_bodies() {
        let m = Mock::start(false, None).await;
        let mut s = settings(m.url(), None);
        s.timeout = Duration::from_millis(300);
        let up = Upstream::new(s).unwrap();
        let t = Instant::now();
        let e = up.manifest("slow", "latest", false).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unavailable { reason, .. } if reason.contains("no answer within 0.3 s")),
            "{e:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        let b = up.blob("stall", DIGEST, 0).await.unwrap();
        let mut body = b.body;
        assert_eq!(body.next().await.unwrap().unwrap().len(), 1000);
        let t = Instant::now();
        let e = body.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("stalled"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(body.next().await.is_none());
        assert_eq!(up.stats().errors, 2);
    }

    #[tokio::test]
    async fn connection_errors_back_off_for_a_second() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let up = Upstream::new(settings(format!("http://127.0.0.1:{port}/"), None)).unwrap();
        let e = up.manifest("a", "latest", false).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unavailable { retry_after: None, .. }),
            "{e:?}"
        );
        let e = up.blob_exists("a", DIGEST).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unavailable { reason, retry_after: Some(_) } if reason.contains("no request sent")),
            "{e:?}"
        );
        assert_eq!(up.stats().requests, 1);
        tokio::time::sleep(CONNECT_BACKOFF + Duration::from_millis(100)).await;
        assert!(up.manifest("a", "latest", false).await.is_err());
        assert_eq!(up.stats().requests, 2);
    }

    #[tokio::test]
    async fn tls_with_a_ca_file_or_insecure() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mirror test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let m = Mock::start(false, Some(Arc::new(server))).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let mut s = settings(m.url(), None);
        s.ca_file = Some(ca_file.clone());
        let up = Upstream::new(s.clone()).unwrap();
        assert_eq!(up.manifest("a/b", "latest", false).await.unwrap().bytes, MANIFEST);
        assert_eq!(count(&m.token_hits), 1);

        let up = Upstream::new(settings(m.url(), None)).unwrap();
        let e = up.manifest("a/b", "latest", false).await.unwrap_err();
        assert!(
            matches!(&e, UpstreamError::Unavailable { reason, .. } if reason.contains("certificate")),
            "{e:?}"
        );

        let mut insecure = settings(m.url(), None);
        insecure.insecure = true;
        let up = Upstream::new(insecure).unwrap();
        assert_eq!(up.manifest("a/b", "latest", false).await.unwrap().bytes, MANIFEST);

        s.ca_file = Some(dir.path().join("absent.pem"));
        let e = Upstream::new(s.clone()).unwrap_err();
        assert!(
            e.contains("\"mock\"") && e.contains("absent.pem") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        s.ca_file = Some(dir.path().join("junk.pem"));
        let e = Upstream::new(s).unwrap_err();
        assert!(e.contains("junk.pem") && e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn settings_are_checked() {
        let new = |url: &str| Upstream::new(settings(url.into(), None)).map(|u| (u.scheme, u.host, u.port));
        assert_eq!(
            new("https://Registry.Example/").unwrap(),
            ("https".into(), "registry.example".into(), 443)
        );
        assert_eq!(
            new("http://127.0.0.1:5001").unwrap(),
            ("http".into(), "127.0.0.1".into(), 5001)
        );
        for (url, says) in [
            ("ftp://h", "http:// or https://"),
            ("registry.example", "http:// or https://"),
            ("https://h/v2", "path"),
            ("https://h?x=1", "path or query"),
            ("https://u:p@h", "credentials"),
            ("https://h h", "not a URL"),
        ] {
            let e = new(url).unwrap_err();
            assert!(e.contains(says) && e.contains("\"mock\""), "{url}: {e}");
        }
        let mut s = settings("https://h".into(), None);
        s.password = Some("p".into());
        assert!(Upstream::new(s.clone()).unwrap_err().contains("without a username"));
        s.username = Some("a:b".into());
        assert!(Upstream::new(s.clone()).is_err());
        s.username = Some("a".into());
        s.timeout = Duration::ZERO;
        assert!(Upstream::new(s).unwrap_err().contains("timeout"));
        fn shared<T: Send + Sync>() {}
        shared::<Upstream>();
        // The calls' futures can be spawned.
        fn spawnable<T: Send + 'static>(_: &T) {}
        let up = Arc::new(Upstream::new(settings("http://h".into(), None)).unwrap());
        let u = up.clone();
        spawnable(&async move { u.manifest("a", "b", false).await.map(|m| m.bytes) });
        let u = up.clone();
        spawnable(&async move { u.blob("a", "b", 0).await.map(|b| b.body) });
        spawnable(&async move { up.blob_exists("a", "b").await });
    }

    #[test]
    fn header_parsing() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&m)
        };
        assert_eq!(h("120"), Some(Duration::from_secs(120)));
        assert_eq!(h("99999999"), Some(RATE_LIMIT_MAX));
        assert_eq!(h("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            http_date("Thu, 29 Feb 2024 23:59:60 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_251_200))
        );
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad}");
        }
        let later = SystemTime::now() + Duration::from_secs(3600 + 120);
        let s = later.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(clock(later).ends_with(&format!("{:02} UTC", s % 60)));
        assert_eq!(content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(content_range("bytes 10-99/*"), Some((10, None)));
        for bad in [
            "bytes 10-99/99",
            "bytes 99-10/100",
            "bytes=10-99/100",
            "bytes 10-/100",
            "",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
        let at: Uri = "https://r.example:5000/v2/a/blobs/sha256:1".parse().unwrap();
        let r = |l: &str| resolve(&at, l).map(|u| u.to_string());
        assert_eq!(
            r("https://s3.example/x?sig=1").as_deref(),
            Some("https://s3.example/x?sig=1")
        );
        assert_eq!(r("HTTP://s3.example/x").as_deref(), Some("http://s3.example/x"));
        assert_eq!(r("//cdn.example/x").as_deref(), Some("https://cdn.example/x"));
        assert_eq!(r("/other").as_deref(), Some("https://r.example:5000/other"));
        assert_eq!(r("next").as_deref(), Some("https://r.example:5000/v2/a/blobs/next"));
        assert_eq!(r("sha256:2"), None);
        assert_eq!(r("ftp://x/y"), None);
        assert_eq!(r("https://"), None);
    }
}
