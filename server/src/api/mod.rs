//! Request dispatch: route → handler, errors → OCI bodies, one access-log line per request.

mod blob;
mod listing;
mod manifest;
mod peer_fill;
mod token;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;

use berth_engine::Engine;

use crate::access::{self, Access, Caller};
use crate::authn::Authn;
use crate::body::{Drained, ReqBody};
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::metrics::{Gauges, Metrics};
use crate::route::{self, Route};

/// Response body type.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A request as handlers see it: its body goes back to the dispatcher when left unread.
pub type Req = Request<ReqBody>;

/// Shared state of the server.
pub struct App {
    /// Storage.
    pub engine: Arc<Engine>,
    /// Validated configuration.
    pub config: Config,
    /// Authentication.
    pub authn: Arc<Authn>,
    /// Access rules.
    pub access: Arc<Access>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Registry requests being handled now (for `http.limits.concurrentrequests`).
    pub inflight: std::sync::atomic::AtomicUsize,
    /// The upstreams of the pull-through cache, when this registry mirrors any.
    pub mirrors: Option<Arc<crate::mirror::Mirrors>>,
}

impl App {
    /// The upstream `repo` is mirrored from, if any.
    pub(crate) fn mirror_target(
        &self,
        repo: &berth_engine::RepoName,
    ) -> Option<(&crate::mirror::Mirrors, crate::mirror::Target<'_>)> {
        let m = self.mirrors.as_deref()?;
        m.target(repo).map(|t| (m, t))
    }
}

/// Counts a request in [`App::inflight`] while alive.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    /// Count one more request; also returns how many are in flight with it.
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> (InFlight<'a>, usize) {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        (InFlight(counter), n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `Docker-Distribution-API-Version` value sent on every response.
pub const API_VERSION: &str = "registry/2.0";

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// A response builder with the registry's common headers.
pub(crate) fn response(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

pub(crate) fn finish(b: http::response::Builder, body: Body) -> Result<Response<Body>, ApiError> {
    b.body(body).map_err(|e| {
        tracing::error!(error = %e, "building a response failed");
        ApiError::new(Kind::Internal)
    })
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Result<Response<Body>, ApiError> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    finish(
        response(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, bytes.len()),
        full(bytes),
    )
}

/// Decoded query parameters (first value wins).
pub(crate) fn query(uri: &http::Uri) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

pub(crate) fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn error_response(e: &ApiError, head: bool) -> Response<Body> {
    let body = e.body();
    let mut b = response(e.status())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    for (k, v) in &e.headers {
        b = b.header(k, v);
    }
    let body = if head { empty() } else { full(body) };
    b.body(body).unwrap_or_else(|_| Response::new(empty()))
}

/// A containerd mirror request (`?ns=docker.io`) on the local name of the upstream serving that
/// host, with the `ns` value it was scoped by (returned in `OCI-Namespace`, as the distribution
/// spec asks); any other request as it is. A host no upstream serves is ignored, never dialled.
fn mirror_namespace(app: &App, route: Route, uri: &http::Uri) -> (Route, Option<HeaderValue>) {
    let Some(mirrors) = app.mirrors.as_deref() else {
        return (route, None);
    };
    let Some(ns) = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    }) else {
        return (route, None);
    };
    let mut scoped = false;
    let route = route.map_repo(|repo| match mirrors.local_name(&repo, &ns) {
        Some(local) => {
            scoped = true;
            local
        }
        None => repo,
    });
    let header = if scoped { HeaderValue::from_str(&ns).ok() } else { None };
    (route, header)
}

/// Refuse a push or delete in a namespace that mirrors an upstream (unless it allows pushes).
fn check_mirror_writes(app: &App, route: &Route, method: &Method) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let (Some(m), Some(repo)) = (app.mirrors.as_deref(), route.repo()) else {
        return Ok(());
    };
    match m.refuses_writes(repo) {
        Some(e) => Err(ApiError::new(Kind::Unsupported).message(format!(
            "{repo} is mirrored from the upstream {:?} ({}): pushes and deletes are refused there; push elsewhere, or set push: true on that upstream",
            e.config.name, e.config.url
        ))),
        None => Ok(()),
    }
}

async fn dispatch(app: &App, route: &Route, caller: &Caller, req: Req) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    check_mirror_writes(app, route, &method)?;
    match (route, &method) {
        (Route::Base, &Method::GET | &Method::HEAD) => json_response(StatusCode::OK, &serde_json::json!({})),
        (Route::Catalog, &Method::GET) => listing::catalog(app, caller, &req).await,
        (Route::Tags(repo), &Method::GET) => listing::tags(app, repo, &req).await,
        (Route::Referrers(repo, d), &Method::GET) => listing::referrers(app, repo, d, &req).await,
        (Route::Blob(repo, d), &Method::GET | &Method::HEAD) => blob::get(app, caller, repo, d, &req).await,
        (Route::Blob(repo, d), &Method::DELETE) => blob::delete(app, repo, d).await,
        (Route::UploadStart(repo), &Method::POST) => upload::start(app, caller, repo, req).await,
        (Route::Upload(repo, id), &Method::PATCH) => upload::patch(app, repo, *id, req).await,
        (Route::Upload(repo, id), &Method::PUT) => upload::put(app, repo, *id, req).await,
        (Route::Upload(repo, id), &Method::GET) => upload::status(app, repo, *id).await,
        (Route::Upload(repo, id), &Method::DELETE) => upload::cancel(app, repo, *id).await,
        (Route::Manifest(repo, r), &Method::GET | &Method::HEAD) => manifest::get(app, repo, r, &method).await,
        (Route::Manifest(repo, r), &Method::PUT) => manifest::put(app, repo, r, req).await,
        (Route::Manifest(repo, r), &Method::DELETE) => manifest::delete(app, repo, r).await,
        (Route::ManifestBadRef(_, r), &Method::GET | &Method::HEAD | &Method::PUT | &Method::DELETE) => {
            manifest::bad_reference(app, r, &method)
        }
        _ => Err(ApiError::new(Kind::MethodNotAllowed).message(format!("{method} is not allowed on this route"))),
    }
}

/// Refuse a delete when deletes are switched off.
pub(crate) fn check_delete_enabled(app: &App) -> Result<(), ApiError> {
    if app.config.delete_enabled {
        Ok(())
    } else {
        Err(ApiError::new(Kind::Unsupported).message(
            "deletes are disabled on this registry; set storage.delete.enabled: true (env REGISTRY_STORAGE_DELETE_ENABLED=true) to allow them",
        ))
    }
}

/// A token server without a registry (`berth token-server`).
pub struct TokenApp {
    /// Must be token mode with the built-in server.
    pub authn: Arc<Authn>,
    /// Rules that decide grants.
    pub access: Arc<Access>,
    /// One log line per request.
    pub access_log: bool,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Limits on request bodies.
    pub body_limits: crate::config::BodyLimits,
}

/// Answer `req` with `answer`, its body wrapped in a [`ReqBody`]; then, on HTTP/1, read and
/// discard what the answer left of the body (within `limits`) before the answer goes out, so
/// that it reaches a client that writes its whole body before reading. When the rest cannot be
/// drained the answer closes the connection. (HTTP/2 ends an unread stream with a reset of its
/// own that leaves the answer intact.)
async fn with_body<F, Fut>(limits: &crate::config::BodyLimits, req: Request<Incoming>, answer: F) -> Response<Body>
where
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    let http1 = req.version() <= http::Version::HTTP_11;
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, incoming) = req.into_parts();
    let (body, mut unread) = ReqBody::new(incoming);
    let mut resp = answer(Request::from_parts(parts, body)).await;
    let left = unread.as_mut().and_then(|rx| rx.try_recv().ok());
    let closing = resp.headers().get(header::CONNECTION).is_some_and(|v| v == "close");
    if left.is_some() && (!http1 || closing) {
        return resp;
    }
    if crate::body::drain(left, limits, expects_continue).await == Drained::Given {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The client address of a request (see [`crate::client::client_ip`]).
fn client_of<B>(req: &Request<B>, proxies: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = req.extensions().get::<crate::client::Peer>().map(|p| p.0.ip());
    crate::client::client_ip(req.headers(), peer, proxies)
}

/// Handle one request of a stand-alone token server: the token endpoint and the JWKS only.
pub async fn handle_token_only(app: Arc<TokenApp>, req: Request<Incoming>) -> Response<Body> {
    let limits = app.body_limits;
    with_body(&limits, req, |req| token_only(app, req)).await
}

async fn token_only(app: Arc<TokenApp>, req: Req) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let Some(server) = app.authn.token_server() else {
        return Response::new(empty());
    };
    let path = req.uri().path().to_owned();
    let (kind, resp) = if path == server.path {
        let client = client_of(&req, &app.trusted_proxies);
        (
            "token",
            token::issue(&app.access, server, client, &app.body_limits, req).await,
        )
    } else if path == token::JWKS_PATH {
        ("jwks", token::jwks(server))
    } else {
        (
            "invalid",
            Err(ApiError::new(Kind::NotFound)
                .message("this is a token server: use the token endpoint or /.well-known/jwks.json")),
        )
    };
    finish_response(app.access_log, None, resp, head, start, &method, kind, None, None, 0)
}

/// Headers a browser may read from responses when CORS is configured.
const CORS_EXPOSE: &str = "Docker-Content-Digest, Location, Range, Link, Docker-Upload-UUID, WWW-Authenticate, OCI-Subject, OCI-Filters-Applied";

/// Handle one request: the API, plus the configured response headers (`http.headers`) and, when
/// `Access-Control-Allow-Origin` is configured, CORS preflights.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let limits = app.config.body_limits;
    with_body(&limits, req, |req| handle_wrapped(app, req)).await
}

async fn handle_wrapped(app: Arc<App>, req: Req) -> Response<Body> {
    let cors = app
        .config
        .headers
        .iter()
        .any(|(k, _)| k == header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let mut resp = if cors && req.method() == Method::OPTIONS && req.uri().path().starts_with("/v2") {
        // A browser's preflight carries no credentials: answer it without authentication.
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty()))
    } else {
        handle_api(app.clone(), req).await
    };
    let h = resp.headers_mut();
    for (k, v) in &app.config.headers {
        h.append(k, v.clone());
    }
    if cors && !h.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS) {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE),
        );
    }
    resp
}

/// Endpoints served beside the registry API.
#[derive(Clone, Copy)]
enum Outside {
    Health,
    Ready,
    Metrics,
    Token,
    Jwks,
    /// Another replica streaming a mirror download this process runs (its own token, not
    /// registry credentials).
    PeerFill,
}

/// The Prometheus exposition of `app`'s metrics.
pub async fn metrics_response(app: &App) -> Result<Response<Body>, ApiError> {
    let storage = match app.metrics.cached_storage() {
        Some(s) => Some(s),
        None => match app.engine.storage_stats().await {
            Ok((n, bytes)) => {
                app.metrics.set_storage(n, bytes);
                Some((n, bytes))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the storage size for /metrics failed");
                None
            }
        },
    };
    let mut text = app.metrics.render(&Gauges {
        uploads_in_progress: app.engine.uploads_in_progress() as u64,
        storage,
        cache: app.engine.cache_stats(),
        blob_cache: app.engine.blob_cache_stats(),
    });
    if let Some(m) = &app.mirrors {
        crate::mirror::report::render(m, &mut text);
    }
    finish(
        response(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .header(header::CONTENT_LENGTH, text.len()),
        full(text),
    )
}

/// Handle one request on the separate plain-HTTP listener (`http.debug.addr`): the metrics,
/// and the health endpoints (for probes that do not speak TLS).
pub async fn handle_debug(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let limits = app.config.body_limits;
    with_body(&limits, req, |req| debug_wrapped(app, req)).await
}

async fn debug_wrapped(app: Arc<App>, req: Req) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let (kind, resp) = match outside_endpoint(&app, req.uri().path(), true) {
        Some(o @ (Outside::Health | Outside::Ready | Outside::Metrics)) => answer_outside(&app, o, None, req).await,
        _ => (
            "invalid",
            Err(ApiError::new(Kind::NotFound).message("this listener serves only the metrics, /healthz and /readyz")),
        ),
    };
    finish_response(
        false,
        Some(&app.metrics),
        resp,
        method == Method::HEAD,
        start,
        &method,
        kind,
        None,
        None,
        0,
    )
}

/// Which endpoint beside the registry API `path` is, if any. The metrics are on the listener
/// `metrics_here` says (the main one unless `http.debug.addr` is set).
fn outside_endpoint(app: &App, path: &str, metrics_here: bool) -> Option<Outside> {
    let token_server = app.authn.token_server();
    match path {
        "/healthz" => Some(Outside::Health),
        "/readyz" => Some(Outside::Ready),
        p if metrics_here && app.config.metrics_path.as_deref() == Some(p) => Some(Outside::Metrics),
        token::JWKS_PATH if token_server.is_some() => Some(Outside::Jwks),
        p if token_server.is_some_and(|s| s.path == p) => Some(Outside::Token),
        p if app.mirrors.is_some() && p.starts_with(crate::mirror::peer::PATH) => Some(Outside::PeerFill),
        _ => None,
    }
}

/// Answer an endpoint beside the registry API, without registry authentication: the route
/// kind for logs and metrics, and the response.
async fn answer_outside(
    app: &App,
    outside: Outside,
    client: Option<std::net::IpAddr>,
    req: Req,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    match (outside, app.authn.token_server()) {
        (Outside::Health, _) => (
            "healthz",
            json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        ),
        (Outside::Ready, _) => ("readyz", readiness(app).await),
        (Outside::Metrics, _) => ("metrics", metrics_response(app).await),
        (Outside::Token, Some(server)) => (
            "token",
            token::issue(&app.access, server, client, &app.config.body_limits, req).await,
        ),
        (Outside::Jwks, Some(server)) => ("jwks", token::jwks(server)),
        (Outside::PeerFill, _) => ("peer_fill", peer_fill::serve(app, &req).await),
        (Outside::Token | Outside::Jwks, None) => ("invalid", Err(Kind::NotFound.into())),
    }
}

/// `/readyz`: 200 when the engine can serve, 503 naming the failing check.
async fn readiness(app: &App) -> Result<Response<Body>, ApiError> {
    match app.engine.ready().await {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(reason = %e, "not ready");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not ready", "reason": e}),
            )
        }
    }
}

async fn handle_api(app: Arc<App>, req: Req) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let bytes_in = header_str(req.headers(), header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // Endpoints outside the registry API, answered without registry authentication: probes,
    // metrics and the built-in token server.
    let client = client_of(&req, &app.config.trusted_proxies);
    if let Some(outside) = outside_endpoint(&app, req.uri().path(), app.config.debug_addr.is_none()) {
        let (kind, resp) = answer_outside(&app, outside, client, req).await;
        return finish_response(
            app.config.access_log,
            Some(&app.metrics),
            resp,
            head,
            start,
            &method,
            kind,
            None,
            None,
            bytes_in,
        );
    }
    let (_inflight, n) = InFlight::enter(&app.inflight);
    if app.config.max_requests > 0 && n > app.config.max_requests {
        let e = ApiError::new(Kind::TooManyRequests)
            .message(format!(
                "the registry is handling its maximum of {} requests (http.limits.concurrentrequests); retry shortly",
                app.config.max_requests
            ))
            .header(header::RETRY_AFTER, "1");
        let mut resp = finish_response(
            app.config.access_log,
            Some(&app.metrics),
            Err(e),
            head,
            start,
            &method,
            "invalid",
            None,
            None,
            bytes_in,
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let (route, namespace) = match route::parse(req.uri().path()) {
        Ok(r) => {
            let (r, ns) = mirror_namespace(&app, r, req.uri());
            (Ok(r), ns)
        }
        Err(e) => (Err(e), None),
    };
    let (kind, repo) = match &route {
        Ok(r) => (r.kind(), r.repo().map(|r| r.to_string())),
        Err(_) => ("invalid", None),
    };
    let mut user = None;
    let result = match app.authn.identify(req.headers(), client).await {
        Err(e) => Err(e),
        Ok(mut caller) => {
            caller.client = client;
            user = caller.user.clone();
            match route {
                Ok(r) => match app.access.authorize(&app.authn, &caller, &access::need(&r, &method)) {
                    Ok(()) if app.config.read_only && !matches!(method, Method::GET | Method::HEAD) => Err(
                        ApiError::new(Kind::Unsupported).message(
                            "the registry is in read-only maintenance mode (storage.maintenance.readonly.enabled): pulls work, pushes and deletes are refused until the operator turns it off",
                        ),
                    ),
                    Ok(()) => dispatch(&app, &r, &caller, req).await,
                    Err(e) => Err(e),
                },
                // An unauthenticated client learns nothing about routes or names.
                Err(_) if caller.user.is_none() && caller.grant.is_none() && app.authn.required() => {
                    Err(app.authn.unauthorized(None, None, None).auth_failure("no_credentials"))
                }
                Err(e) => Err(e),
            }
        }
    };
    let mut resp = finish_response(
        app.config.access_log,
        Some(&app.metrics),
        result,
        head,
        start,
        &method,
        kind,
        repo.as_deref(),
        user.as_deref(),
        bytes_in,
    );
    if let Some(ns) = namespace {
        resp.headers_mut().insert("oci-namespace", ns);
    }
    resp
}

/// Turn a handler result into the response, add the common headers, write the access log.
#[allow(clippy::too_many_arguments)]
fn finish_response(
    access_log: bool,
    metrics: Option<&Metrics>,
    result: Result<Response<Body>, ApiError>,
    head: bool,
    start: Instant,
    method: &Method,
    kind: &str,
    repo: Option<&str>,
    user: Option<&str>,
    bytes_in: u64,
) -> Response<Body> {
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let (Some(m), Some(reason)) = (metrics, e.auth_failure) {
                m.auth_failure(reason);
            }
            error_response(&e, head)
        }
    };
    resp.headers_mut()
        .insert("docker-distribution-api-version", HeaderValue::from_static(API_VERSION));
    let status = resp.status().as_u16();
    let bytes_out = if head {
        0
    } else {
        header_str(resp.headers(), header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if let Some(m) = metrics {
        m.request(kind, method, status, start.elapsed(), bytes_out);
        if !kind.starts_with("upload") {
            // Upload bodies are counted as they stream; others by their declared length.
            m.received(kind, bytes_in);
        }
    }
    if access_log {
        tracing::info!(
            target: "berth::access",
            %method,
            route = kind,
            repo = repo.unwrap_or("-"),
            user = user.unwrap_or("-"),
            status,
            bytes_in,
            bytes_out,
            ms = %format_args!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
    resp
}
