//! Authentication at the HTTP edge: reads credentials from the request, asks `berth-auth`, and
//! turns a refusal into a 401 with the right challenge.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, header};

use berth_auth::token::{Grant, Issuer, KeySet, KidFormat, SigningKey, Verifier};
use berth_auth::{BasicCredentials, Principal, ThrottleConfig, Users};

use crate::config::{AuthConfig, TokenConfig, UserSources};
use crate::error::{ApiError, Kind};

/// How often the htpasswd file and the secrets directory are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Who is calling.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Authenticated user name (token mode: the token's `sub`); `None` for anonymous clients.
    pub user: Option<String>,
    /// In token mode, what the caller's token grants.
    pub grant: Option<Arc<Grant>>,
    /// For a namespace credential, its namespaces.
    pub namespaces: Option<Arc<[String]>>,
    /// The client's address (after trusted proxies), for rules with `ips`.
    pub client: Option<IpAddr>,
}

impl Caller {
    /// The caller as the access rules see it.
    pub fn principal(&self) -> Principal<'_> {
        Principal {
            user: self.user.as_deref(),
            namespaces: self.namespaces.as_deref(),
            client: self.client,
        }
    }
}

/// The built-in token server.
pub struct TokenServer {
    /// Signs tokens.
    pub issuer: Issuer,
    /// Users who may log in.
    pub users: Users,
    /// Path of the token endpoint.
    pub path: String,
}

/// Token mode.
pub struct TokenAuth {
    /// Challenge realm (token endpoint URL).
    pub realm: String,
    /// Service name.
    pub service: String,
    /// Checks presented tokens.
    pub verifier: Verifier,
    /// Where more keys come from, when a JWKS URL is configured.
    pub remote: Option<crate::jwks_fetch::RemoteJwks>,
    /// The built-in token server, when enabled.
    pub server: Option<TokenServer>,
}

/// The configured authentication.
pub enum Authn {
    /// No authentication.
    None,
    /// htpasswd Basic.
    Basic {
        /// Challenge realm.
        realm: String,
        /// Verifier.
        verifier: Box<Users>,
    },
    /// Bearer tokens.
    Token(Box<TokenAuth>),
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

fn token_auth(cfg: &TokenConfig, throttle: ThrottleConfig) -> Result<TokenAuth, String> {
    let mut keys = KeySet::default();
    if let Some(p) = &cfg.jwks {
        let text = String::from_utf8(read(p, "auth.token.jwks")?)
            .map_err(|_| format!("auth.token.jwks: {} is not UTF-8", p.display()))?;
        keys.add_jwks(p, &text).map_err(|e| format!("auth.token.jwks: {e}"))?;
    }
    if let Some(p) = &cfg.rootcertbundle {
        keys.add_root_bundle(p, &read(p, "auth.token.rootcertbundle")?)
            .map_err(|e| format!("auth.token.rootcertbundle: {e}"))?;
    }
    if let Some(p) = &cfg.publickey {
        keys.add_public_key(p, &read(p, "auth.token.publickey")?)
            .map_err(|e| format!("auth.token.publickey: {e}"))?;
    }
    let server = match &cfg.server {
        None => None,
        Some(s) => {
            let kid = if s.kid == "libtrust" {
                KidFormat::Libtrust
            } else {
                KidFormat::Thumbprint
            };
            let mut signing = Vec::new();
            for (i, p) in s.keys.iter().enumerate() {
                let pem = read(p, "auth.token.server.key")?;
                // The certificate belongs to the newest (signing) key.
                let cert = match (&s.certificate, i + 1 == s.keys.len()) {
                    (Some(c), true) => Some(read(c, "auth.token.server.certificate")?),
                    _ => None,
                };
                let key = SigningKey::from_pem(&p.display().to_string(), &pem, cert.as_deref(), kid)
                    .map_err(|e| format!("auth.token.server.key: {e}"))?;
                key.add_to(&mut keys)
                    .map_err(|e| format!("auth.token.server.key: {e}"))?;
                signing.push(key);
            }
            let issuer = Issuer::new(cfg.issuer.clone(), cfg.service.clone(), s.expiration, signing)
                .map_err(|e| format!("auth.token.server.key: {e}"))?
                .with_refresh_lifetime(s.refresh_expiration);
            let users = open_users(&s.users, throttle)?;
            Some(TokenServer {
                issuer,
                users,
                path: s.path.clone(),
            })
        }
    };
    let remote = match &cfg.jwks_url {
        Some(url) => Some(crate::jwks_fetch::RemoteJwks::new(url.clone(), keys.clone())?),
        None => None,
    };
    Ok(TokenAuth {
        realm: cfg.realm.clone(),
        service: cfg.service.clone(),
        verifier: Verifier::new(cfg.issuer.clone(), cfg.service.clone(), keys, cfg.leeway),
        server,
        remote,
    })
}

fn open_users(sources: &UserSources, throttle: ThrottleConfig) -> Result<Users, String> {
    let users = Users::open(sources.htpasswd.as_deref(), sources.secrets.as_deref())
        .map_err(|e| e.to_string())?
        .with_throttle(throttle);
    if let Some(s) = users.secrets() {
        for reason in s.skipped() {
            tracing::warn!(dir = %s.dir().display(), "secrets directory: skipping {reason}");
        }
        tracing::info!(dir = %s.dir().display(), namespaces = ?s.namespaces(), "namespace credentials loaded");
    }
    if users.is_empty() {
        tracing::warn!(
            "no users are configured (empty htpasswd file and no namespace credentials): every login will be refused"
        );
    }
    Ok(users)
}

impl Authn {
    /// Build from the validated configuration; unreadable or invalid files are errors that
    /// name the setting, the file and the problem.
    pub fn from_config(cfg: &AuthConfig, throttle: ThrottleConfig) -> Result<Authn, String> {
        Ok(match cfg {
            AuthConfig::None => Authn::None,
            AuthConfig::Basic { realm, users } => {
                let verifier = Box::new(open_users(users, throttle)?);
                Authn::Basic {
                    realm: realm.clone(),
                    verifier,
                }
            }
            AuthConfig::Token(t) => {
                let auth = token_auth(t, throttle)?;
                tracing::info!(kids = ?auth.verifier.kids(), "token verification keys loaded");
                Authn::Token(Box::new(auth))
            }
        })
    }

    /// Short name for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Authn::None => "none",
            Authn::Basic { .. } => "basic",
            Authn::Token(_) => "token",
        }
    }

    /// The built-in token server, if enabled.
    pub fn token_server(&self) -> Option<&TokenServer> {
        match self {
            Authn::Token(t) => t.server.as_ref(),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge for a request that needs `scope` (token mode), with
    /// `error` when a token was presented but is not enough.
    pub fn challenge(&self, scope: Option<&str>, error: Option<&str>) -> Option<String> {
        match self {
            Authn::None => None,
            Authn::Basic { realm, .. } => Some(format!("Basic realm=\"{}\", charset=\"UTF-8\"", quote(realm))),
            Authn::Token(t) => {
                let mut c = format!("Bearer realm=\"{}\",service=\"{}\"", quote(&t.realm), quote(&t.service));
                if let Some(s) = scope {
                    c.push_str(&format!(",scope=\"{}\"", quote(s)));
                }
                if let Some(e) = error {
                    c.push_str(&format!(",error=\"{e}\""));
                }
                Some(c)
            }
        }
    }

    /// A 401 carrying the challenge.
    pub fn unauthorized(&self, message: Option<&str>, scope: Option<&str>, error: Option<&str>) -> ApiError {
        let mut e = ApiError::new(Kind::Unauthorized);
        if let Some(m) = message {
            e = e.message(m);
        }
        match self.challenge(scope, error) {
            Some(c) => e.header(header::WWW_AUTHENTICATE, &c),
            None => e,
        }
    }

    /// Who is calling (from `client`): anonymous without credentials, the user with good ones,
    /// a 401 with wrong or malformed ones, a 429 while failed logins are throttled.
    pub async fn identify(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Result<Caller, ApiError> {
        if matches!(self, Authn::None) {
            return Ok(Caller::default());
        }
        // A header that is there but not text is a malformed credential, never "no credentials".
        let value = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                let reason = if matches!(self, Authn::Basic { .. }) {
                    "basic_malformed"
                } else {
                    "bearer_missing"
                };
                return Err(self
                    .unauthorized(
                        Some("the Authorization header holds characters other than visible ASCII; send Basic base64(user:password) or Bearer <token>"),
                        None,
                        None,
                    )
                    .auth_failure(reason));
            }
        };
        match (self, value) {
            (Authn::None, _) | (_, None) => Ok(Caller::default()),
            (Authn::Basic { verifier, .. }, Some(value)) => {
                let Some(creds) = BasicCredentials::from_header(value) else {
                    return Err(self
                        .unauthorized(
                            Some("the Authorization header is not valid Basic credentials"),
                            None,
                            None,
                        )
                        .auth_failure("basic_malformed"));
                };
                if let Some(id) = verifier.verify(&creds, client).await? {
                    Ok(Caller {
                        user: Some(id.user),
                        namespaces: id.namespaces,
                        client,
                        ..Caller::default()
                    })
                } else {
                    tracing::info!(user = %creds.user, "authentication failed: unknown user or wrong password");
                    Err(self
                        .unauthorized(Some("invalid username or password"), None, None)
                        .auth_failure("basic_invalid"))
                }
            }
            (Authn::Token(t), Some(value)) => {
                let token = value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, tok)| tok.trim());
                let Some(token) = token else {
                    return Err(self
                        .unauthorized(
                            Some(&format!("this registry uses token authentication: get a token from {} and send it as Authorization: Bearer", t.realm)),
                            None,
                            None,
                        )
                        .auth_failure("bearer_missing"));
                };
                let mut verified = t.verifier.verify(token);
                if let (Err(berth_auth::token::VerifyError::UnknownKid { .. }), Some(remote)) = (&verified, &t.remote)
                    && remote.refresh(&t.verifier).await
                {
                    verified = t.verifier.verify(token);
                }
                match verified {
                    Ok(grant) => Ok(Caller {
                        user: grant.subject.clone().filter(|s| !s.is_empty()),
                        grant: Some(grant),
                        ..Caller::default()
                    }),
                    Err(e) => {
                        tracing::warn!(reason = %e, "bearer token rejected");
                        Err(self
                            .unauthorized(Some(&format!("invalid token: {e}")), None, Some("invalid_token"))
                            .auth_failure(e.reason()))
                    }
                }
            }
        }
    }

    /// Whether credentials are required at all.
    pub fn required(&self) -> bool {
        !matches!(self, Authn::None)
    }

    /// Keep credentials current: fetch a configured JWKS URL now and every few minutes, and
    /// re-read htpasswd files and secrets directories when they change.
    pub fn spawn_reloader(self: &Arc<Self>) {
        if let Authn::Token(t) = &**self
            && t.remote.is_some()
        {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::jwks_fetch::REFRESH_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Authn::Token(t) = &*me
                        && let Some(remote) = &t.remote
                    {
                        remote.refresh(&t.verifier).await;
                    }
                }
            });
        }
        if self.users().is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            loop {
                tick.tick().await;
                let me = me.clone();
                let res = tokio::task::spawn_blocking(move || {
                    me.users().map(|u| (u.reload(), u.secrets().map(|s| s.skipped())))
                })
                .await;
                match res {
                    Ok(Some((r, skipped))) => {
                        if let Some(users) = r.htpasswd {
                            tracing::info!(users, "htpasswd file reloaded");
                        }
                        if let Some(e) = r.htpasswd_error {
                            tracing::warn!("htpasswd file changed but cannot be used, keeping the previous users: {e}");
                        }
                        if let Some(namespaces) = r.namespaces {
                            for reason in skipped.unwrap_or_default() {
                                tracing::warn!("secrets directory: skipping {reason}");
                            }
                            tracing::info!(?namespaces, "namespace credentials reloaded");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "credentials reload task failed"),
                }
            }
        });
    }

    /// The users, in basic mode or for the token server.
    pub fn users(&self) -> Option<&Users> {
        match self {
            Authn::Basic { verifier, .. } => Some(verifier),
            Authn::Token(t) => t.server.as_ref().map(|s| &s.users),
            Authn::None => None,
        }
    }
}
