//! The built-in token server's endpoints: `GET`/`POST <path>` (default `/auth`) and
//! `GET /.well-known/jwks.json`.

use bytes::BytesMut;
use futures_util::StreamExt as _;
use http::{Method, Response, StatusCode, header};

use berth_auth::token::RefreshBinding;
use berth_auth::{BasicCredentials, CredentialSource, Identity, Principal, Scope, grant, merge_scopes};
use berth_engine::RepoName;

use super::{Body, Req, finish, full, json_response, response};
use crate::access::Access;
use crate::authn::TokenServer;
use crate::config::BodyLimits;
use crate::error::{ApiError, Kind};

/// Largest token request body.
const MAX_FORM: usize = 64 * 1024;

/// Path of the published keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(Kind::InvalidRequest).message(message)
}

/// What a token request asks for, from the query (GET) or the form (POST).
struct TokenRequest {
    service: Option<String>,
    scopes: Vec<String>,
    offline: bool,
    credentials: Option<BasicCredentials>,
    refresh_token: Option<String>,
}

fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A 401 with the token endpoint's Basic challenge.
fn login_refused(challenge: &str, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(Kind::Unauthorized)
        .auth_failure(reason)
        .message(message)
        .header(header::WWW_AUTHENTICATE, challenge)
}

async fn parse_request(req: Req, challenge: &str, limits: &BodyLimits) -> Result<TokenRequest, ApiError> {
    // An Authorization header that is not well-formed Basic is refused: answering it with an
    // anonymous token would hide the client's mistake behind later 401s from the registry.
    let header_creds = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(BasicCredentials::from_header).ok_or_else(|| {
            login_refused(
                challenge,
                "basic_malformed",
                "the Authorization header is not valid Basic credentials (Basic base64(user:password))",
            )
        })?),
    };
    let query = pairs(req.uri().query().unwrap_or("").as_bytes());
    let get = |list: &[(String, String)], k: &str| list.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if req.method() == Method::GET {
        return Ok(TokenRequest {
            service: get(&query, "service"),
            scopes: query
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect(),
            offline: get(&query, "offline_token").is_some_and(|v| v == "true"),
            credentials: header_creds,
            refresh_token: None,
        });
    }
    // Under the body limits like every body: a form that drips is cut, not waited for.
    let mut body = BytesMut::new();
    let mut frames = std::pin::pin!(crate::body::guarded(req.into_body(), *limits, |_| {}));
    while let Some(data) = frames.next().await {
        let data = data.map_err(|e| bad_request(format!("reading the token request failed: {e}")))?;
        if body.len() + data.len() > MAX_FORM {
            return Err(bad_request(format!(
                "the token request is larger than {MAX_FORM} bytes"
            )));
        }
        body.extend_from_slice(&data);
    }
    let form = pairs(&body);
    let grant_type = get(&form, "grant_type").unwrap_or_default();
    let (credentials, refresh_token) = match grant_type.as_str() {
        "password" => {
            let user = get(&form, "username").ok_or_else(|| bad_request("grant_type=password needs username"))?;
            let password = get(&form, "password").ok_or_else(|| bad_request("grant_type=password needs password"))?;
            (Some(BasicCredentials { user, password }), None)
        }
        "refresh_token" => {
            let t = get(&form, "refresh_token")
                .ok_or_else(|| bad_request("grant_type=refresh_token needs refresh_token"))?;
            (None, Some(t))
        }
        other => {
            return Err(bad_request(format!(
                "unsupported grant_type {other:?}; use password or refresh_token"
            )));
        }
    };
    Ok(TokenRequest {
        service: get(&form, "service").or_else(|| get(&query, "service")),
        scopes: get(&form, "scope").into_iter().collect(),
        offline: get(&form, "access_type").is_some_and(|v| v == "offline") || grant_type == "password",
        credentials,
        refresh_token,
    })
}

/// The scopes of a request (each `scope` value may hold several, space-separated), checked
/// and merged: a repository scope must name a valid repository (a name the registry would
/// refuse is a client mistake, answered 400 rather than with a token that silently grants
/// nothing), and scopes naming the same resource become one with the union of their actions.
fn requested_scopes(values: &[String]) -> Result<Vec<Scope>, ApiError> {
    let mut parsed = Vec::new();
    for raw in values.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
        let wanted: Scope = raw.parse().map_err(|e| bad_request(format!("scope {raw:?}: {e}")))?;
        if wanted.resource_type == "repository"
            && let Err(e) = wanted.name.parse::<RepoName>()
        {
            return Err(bad_request(format!("scope {raw:?}: {e}")));
        }
        parsed.push(wanted);
    }
    Ok(merge_scopes(parsed))
}

/// Answer a token request.
pub(super) async fn issue(
    access: &Access,
    server: &TokenServer,
    client: Option<std::net::IpAddr>,
    limits: &BodyLimits,
    req: Req,
) -> Result<Response<Body>, ApiError> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::new(Kind::MethodNotAllowed).message("the token endpoint takes GET or POST"));
    }
    let challenge = format!("Basic realm=\"{}\"", server.issuer.service().replace('"', ""));
    let r = parse_request(req, &challenge, limits).await?;
    let service = r.service.ok_or_else(|| {
        bad_request(format!(
            "Missing service parameter: add service={} to the token request",
            server.issuer.service()
        ))
    })?;
    if service != server.issuer.service() {
        return Err(bad_request(format!(
            "unknown service {service:?}: this token server issues tokens for {:?}",
            server.issuer.service()
        )));
    }
    let identity: Option<Identity> = match (&r.credentials, &r.refresh_token) {
        (Some(c), _) => {
            let Some(id) = server.users.verify(c, client).await? else {
                tracing::info!(user = %c.user, "token request refused: unknown user or wrong password");
                return Err(login_refused(
                    &challenge,
                    "token_request_invalid_credentials",
                    "invalid username or password",
                ));
            };
            Some(id)
        }
        (None, Some(t)) => {
            let mut found = None;
            server
                .issuer
                .refresh(t, |user, source| {
                    let (id, stored) = server.users.credential(user, CredentialSource::parse(source)?)?;
                    found = Some(id);
                    Some(stored)
                })
                .map_err(|e| {
                    tracing::info!(reason = %e, "refresh token refused");
                    login_refused(
                        &challenge,
                        "token_request_invalid_refresh",
                        format!("invalid refresh token: {e}"),
                    )
                })?;
            found
        }
        (None, None) => None,
    };
    let user = identity.as_ref().map(|i| i.user.clone());
    let who = Principal {
        user: user.as_deref(),
        namespaces: identity.as_ref().and_then(|i| i.namespaces.as_deref()),
        client,
    };
    let mut granted = Vec::new();
    for wanted in requested_scopes(&r.scopes)? {
        let g = grant(access.rules(), &who, &wanted);
        if g.actions.len() < wanted.actions.len() {
            tracing::info!(user = user.as_deref().unwrap_or("-"), requested = %wanted, granted = %g, "token grants less than requested");
        }
        granted.push(g);
    }
    // A refresh token is bound to the credential as it is stored now (see docs/auth.md).
    let stored = match (&identity, r.offline) {
        (Some(id), true) => server.users.credential(&id.user, id.source()),
        _ => None,
    };
    let binding = match (&identity, &stored) {
        (Some(id), Some((_, credential))) => Some(RefreshBinding {
            source: id.source().as_str(),
            credential,
        }),
        _ => None,
    };
    let issued = server
        .issuer
        .issue(user.as_deref().unwrap_or(""), &granted, binding)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a token failed");
            ApiError::new(Kind::Internal)
        })?;
    let body = serde_json::to_vec(&issued).unwrap_or_default();
    finish(
        response(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::CONTENT_LENGTH, body.len()),
        full(body),
    )
}

/// The public keys.
pub(super) fn jwks(server: &TokenServer) -> Result<Response<Body>, ApiError> {
    json_response(StatusCode::OK, &server.issuer.jwks())
}
