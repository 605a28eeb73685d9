//! Authentication at the HTTP edge: reads credentials from the request, asks `berth-auth`, and
//! turns a refusal into a 401 with the right challenge.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, header};

use berth_auth::{BasicAuth, BasicCredentials};

use crate::config::AuthConfig;
use crate::error::{ApiError, Kind};

/// How often the htpasswd file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The configured authentication.
pub enum Authn {
    /// No authentication.
    None,
    /// htpasswd Basic.
    Basic {
        /// Challenge realm.
        realm: String,
        /// Verifier.
        verifier: BasicAuth,
    },
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Authn {
    /// Build from the validated configuration; a bad htpasswd file is an error naming the file
    /// and line.
    pub fn from_config(cfg: &AuthConfig) -> Result<Authn, String> {
        Ok(match cfg {
            AuthConfig::None => Authn::None,
            AuthConfig::Basic { realm, path } => {
                let verifier = BasicAuth::open(path).map_err(|e| format!("auth.htpasswd.path: {e}"))?;
                if verifier.users() == 0 {
                    tracing::warn!(file = %path.display(), "the htpasswd file has no users: every request will be refused");
                }
                Authn::Basic {
                    realm: realm.clone(),
                    verifier,
                }
            }
        })
    }

    /// Short name for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Authn::None => "none",
            Authn::Basic { .. } => "basic",
        }
    }

    /// The `WWW-Authenticate` challenge, when the mode has one.
    pub fn challenge(&self) -> Option<String> {
        match self {
            Authn::None => None,
            Authn::Basic { realm, .. } => Some(format!("Basic realm=\"{}\", charset=\"UTF-8\"", quote(realm))),
        }
    }

    /// A 401 carrying the challenge.
    pub fn unauthorized(&self, message: Option<&str>) -> ApiError {
        let mut e = ApiError::new(Kind::Unauthorized);
        if let Some(m) = message {
            e = e.message(m);
        }
        match self.challenge() {
            Some(c) => e.header(header::WWW_AUTHENTICATE, &c),
            None => e,
        }
    }

    /// Who is calling: `Ok(None)` without credentials, `Ok(Some(user))` with good ones, a 401
    /// with wrong ones.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Authn::Basic { verifier, .. } = self else {
            return Ok(None);
        };
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        let Some(creds) = BasicCredentials::from_header(value) else {
            return Err(self.unauthorized(Some("the Authorization header is not valid Basic credentials")));
        };
        if verifier.verify(&creds).await {
            Ok(Some(creds.user))
        } else {
            tracing::info!(user = %creds.user, "authentication failed: unknown user or wrong password");
            Err(self.unauthorized(Some("invalid username or password")))
        }
    }

    /// Whether credentials are required at all.
    pub fn required(&self) -> bool {
        !matches!(self, Authn::None)
    }

    /// Keep credentials current: re-read the htpasswd file when it changes.
    pub fn spawn_reloader(self: &Arc<Self>) {
        if !matches!(**self, Authn::Basic { .. }) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            loop {
                tick.tick().await;
                let me = me.clone();
                let res = tokio::task::spawn_blocking(move || match &*me {
                    Authn::Basic { verifier, .. } => verifier.reload_if_changed().map(|c| (c, verifier.users())),
                    Authn::None => Ok((false, 0)),
                })
                .await;
                match res {
                    Ok(Ok((true, users))) => tracing::info!(users, "htpasswd file reloaded"),
                    Ok(Ok((false, _))) => {}
                    Ok(Err(e)) => {
                        tracing::warn!("htpasswd file changed but cannot be used, keeping the previous users: {e}")
                    }
                    Err(e) => tracing::warn!(error = %e, "htpasswd reload task failed"),
                }
            }
        });
    }
}
