//! The built-in token server's endpoints: `GET`/`POST <path>` (default `/auth`) and
//! `GET /.well-known/jwks.json`.

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use berth_auth::{BasicCredentials, Identity, Principal, Scope, grant};

use super::{Body, Req, finish, full, header_str, json_response, response};
use crate::access::Access;
use crate::authn::TokenServer;
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

async fn parse_request(req: Req) -> Result<TokenRequest, ApiError> {
    let header_creds = header_str(req.headers(), header::AUTHORIZATION).and_then(BasicCredentials::from_header);
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
    let body: Bytes = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|e| bad_request(format!("reading the token request failed: {e}")))?
        .to_bytes();
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

/// Answer a token request.
pub(super) async fn issue(
    access: &Access,
    server: &TokenServer,
    client: Option<std::net::IpAddr>,
    req: Req,
) -> Result<Response<Body>, ApiError> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::new(Kind::MethodNotAllowed).message("the token endpoint takes GET or POST"));
    }
    let r = parse_request(req).await?;
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
    let challenge = format!("Basic realm=\"{}\"", server.issuer.service().replace('"', ""));
    let identity: Option<Identity> = match (&r.credentials, &r.refresh_token) {
        (Some(c), _) => {
            let Some(id) = server.users.verify(c).await else {
                tracing::info!(user = %c.user, "token request refused: unknown user or wrong password");
                return Err(ApiError::new(Kind::Unauthorized)
                    .auth_failure("token_request_invalid_credentials")
                    .message("invalid username or password")
                    .header(header::WWW_AUTHENTICATE, &challenge));
            };
            Some(id)
        }
        (None, Some(t)) => {
            let user = server.issuer.refresh_subject(t).map_err(|e| {
                tracing::info!(reason = %e, "refresh token refused");
                ApiError::new(Kind::Unauthorized)
                    .auth_failure("token_request_invalid_refresh")
                    .message(format!("invalid refresh token: {e}"))
            })?;
            let Some(id) = server.users.lookup(&user) else {
                return Err(ApiError::new(Kind::Unauthorized)
                    .auth_failure("token_request_invalid_refresh")
                    .message("the refresh token's user no longer exists"));
            };
            Some(id)
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
    for raw in r.scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
        let wanted: Scope = raw.parse().map_err(|e| bad_request(format!("scope {raw:?}: {e}")))?;
        let g = grant(access.rules(), &who, &wanted);
        if g.actions.len() < wanted.actions.len() {
            tracing::info!(user = user.as_deref().unwrap_or("-"), requested = %wanted, granted = %g, "token grants less than requested");
        }
        granted.push(g);
    }
    let issued = server
        .issuer
        .issue(user.as_deref().unwrap_or(""), &granted, r.offline)
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
