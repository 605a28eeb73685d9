//! Tests of the upstream client against a mock upstream: a registry with a token service (or
//! Basic only), and a second host that blob redirects land on.

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
