//! The built-in token server's core: signs access tokens (and refresh tokens) for a service and
//! publishes the public keys as a JWKS. Which scopes a user gets is decided by the caller
//! (see [`crate::AccessRules::grant`]).

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;
use serde_json::{Value, json};

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::keys::KeySet;
use super::signing::{SigningKey, hmac_sha256};
use super::verify::{Verifier, VerifyError};
use crate::scope::Scope;

/// Default lifetime of refresh tokens (`auth.token.server.refreshexpiration`).
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Bytes of the credential binding kept in a refresh token (128 bits of an HMAC-SHA256).
const BINDING_LEN: usize = 16;

/// What a refresh token is bound to: the user's stored credential when it was issued. The token
/// carries only a keyed hash of it, so it stops working when the credential changes.
#[derive(Clone, Copy)]
pub struct RefreshBinding<'a> {
    /// Where the credential is kept (an opaque tag such as `htpasswd`), written into the token
    /// so the refresh looks in the same place.
    pub source: &'a str,
    /// The stored credential (a bcrypt hash line, a digest of a secret); never put in the token.
    pub credential: &'a [u8],
}

/// Why a refresh token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// Not a valid token of this issuer, or not a refresh token.
    #[error("{0}")]
    Invalid(VerifyError),
    /// The user is gone, or their password changed since the token was issued (or the token
    /// predates credential binding).
    #[error("the user's credentials changed or the user was removed since it was issued; log in again")]
    Revoked,
}

/// A refresh token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The user.
    pub user: String,
    /// The credential source the token is bound to.
    pub source: String,
}
/// Subject prefix that marks a refresh token; such a token grants no access by itself.
const REFRESH_MARK: &str = "berth-refresh";

/// A token as the token endpoint returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    /// The access token.
    pub token: String,
    /// The same, under the OAuth2 name.
    pub access_token: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// RFC 3339 time of issue.
    pub issued_at: String,
    /// A refresh token, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

#[derive(Serialize)]
struct AccessEntry<'a> {
    #[serde(rename = "type")]
    resource_type: &'a str,
    name: &'a str,
    actions: Vec<&'static str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    typ: Option<&'static str>,
    /// Refresh tokens: the credential source.
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<&'a str>,
    /// Refresh tokens: base64url of the credential binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    cred: Option<String>,
}

/// The claims of a verified refresh token that the binding needs.
#[derive(serde::Deserialize)]
struct RefreshClaims {
    src: Option<String>,
    cred: Option<String>,
}

/// Signs tokens for one service.
pub struct Issuer {
    issuer: String,
    service: String,
    lifetime: Duration,
    refresh_lifetime: Duration,
    /// Oldest first; the last one signs, all verify.
    keys: Vec<SigningKey>,
    refresh: Verifier,
}

impl Issuer {
    /// An issuer. `keys` must not be empty; the last key signs.
    pub fn new(issuer: String, service: String, lifetime: Duration, keys: Vec<SigningKey>) -> Result<Issuer, String> {
        if keys.is_empty() {
            return Err("the token server needs at least one signing key".into());
        }
        let mut set = KeySet::default();
        for k in &keys {
            k.add_to(&mut set)?;
        }
        let refresh = Verifier::new(issuer.clone(), service.clone(), set, Duration::from_secs(60));
        Ok(Issuer {
            issuer,
            service,
            lifetime,
            refresh_lifetime: REFRESH_LIFETIME,
            keys,
            refresh,
        })
    }

    /// Set the refresh-token lifetime.
    pub fn with_refresh_lifetime(mut self, lifetime: Duration) -> Issuer {
        self.refresh_lifetime = lifetime;
        self
    }

    /// Refresh-token lifetime.
    pub fn refresh_lifetime(&self) -> Duration {
        self.refresh_lifetime
    }

    /// The binding of `subject`'s credential under the key `binding_key`.
    fn binding(binding_key: &[u8; 32], subject: &str, b: RefreshBinding<'_>) -> [u8; BINDING_LEN] {
        let mac = hmac_sha256(
            binding_key,
            &[
                b"v1\0",
                &(subject.len() as u64).to_le_bytes(),
                subject.as_bytes(),
                &(b.source.len() as u64).to_le_bytes(),
                b.source.as_bytes(),
                b.credential,
            ],
        );
        let mut out = [0u8; BINDING_LEN];
        out.copy_from_slice(&mac[..BINDING_LEN]);
        out
    }

    /// The service tokens are for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The issuer name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Access-token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The signing keys, oldest first.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// Public keys as a JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()})
    }

    fn sign(&self, claims: &Claims<'_>) -> Result<String, String> {
        let key = self.keys.last().ok_or("no signing key")?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        if let Some(cert) = &key.x5c {
            header.x5c = Some(vec![cert.clone()]);
        }
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| e.to_string())
    }

    /// Issue an access token for `subject` (empty for anonymous) granting `access`, and, when
    /// `refresh` is given, a refresh token bound to that credential.
    pub fn issue(
        &self,
        subject: &str,
        access: &[Scope],
        refresh: Option<RefreshBinding<'_>>,
    ) -> Result<Issued, String> {
        let now = jsonwebtoken::get_current_timestamp();
        let entries = access
            .iter()
            .filter(|s| !s.actions.is_empty())
            .map(|s| AccessEntry {
                resource_type: &s.resource_type,
                name: &s.name,
                actions: s.actions.iter().map(|a| a.as_str()).collect(),
            })
            .collect();
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: now + self.lifetime.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            access: entries,
            typ: None,
            src: None,
            cred: None,
        };
        let token = self.sign(&claims)?;
        let refresh_token = match refresh {
            Some(b) if !subject.is_empty() => {
                let key = self.keys.last().ok_or("no signing key")?;
                let sub = format!("{REFRESH_MARK}:{subject}");
                let rc = Claims {
                    sub: &sub,
                    exp: now + self.refresh_lifetime.as_secs(),
                    jti: hex::encode(rand::random::<[u8; 16]>()),
                    access: Vec::new(),
                    typ: Some("refresh"),
                    src: Some(b.source),
                    cred: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Self::binding(
                        &key.binding,
                        subject,
                        b,
                    ))),
                    ..claims
                };
                Some(self.sign(&rc)?)
            }
            _ => None,
        };
        let issued_at = time::OffsetDateTime::from_unix_timestamp(now as i64)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        Ok(Issued {
            access_token: token.clone(),
            token,
            expires_in: self.lifetime.as_secs(),
            issued_at,
            refresh_token,
        })
    }

    /// Check a refresh token: signature and times, then its credential binding against what
    /// `credential(user, source)` says is stored now (`None`: the user is gone), compared in
    /// constant time.
    pub fn refresh(
        &self,
        refresh_token: &str,
        credential: impl FnOnce(&str, &str) -> Option<Vec<u8>>,
    ) -> Result<Refreshed, RefreshError> {
        let grant = self
            .refresh
            .verify_uncached(refresh_token)
            .map_err(RefreshError::Invalid)?;
        let user = grant
            .subject
            .as_deref()
            .and_then(|s| s.strip_prefix(REFRESH_MARK))
            .and_then(|s| s.strip_prefix(':'))
            .map(str::to_owned)
            .ok_or_else(|| RefreshError::Invalid(VerifyError::Malformed("not a refresh token".into())))?;
        // The signature is verified: the payload can be read as it is.
        let claims: RefreshClaims = refresh_token
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| RefreshError::Invalid(VerifyError::Malformed("refresh token payload".into())))?;
        let (Some(source), Some(cred)) = (claims.src, claims.cred) else {
            return Err(RefreshError::Revoked);
        };
        let presented = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cred)
            .map_err(|_| RefreshError::Revoked)?;
        let kid = jsonwebtoken::decode_header(refresh_token).ok().and_then(|h| h.kid);
        let key = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid),
            None => self.keys.last(),
        }
        .ok_or(RefreshError::Revoked)?;
        let stored = credential(&user, &source).ok_or(RefreshError::Revoked)?;
        let expected = Self::binding(
            &key.binding,
            &user,
            RefreshBinding {
                source: &source,
                credential: &stored,
            },
        );
        if !bool::from(expected.as_slice().ct_eq(presented.as_slice())) {
            return Err(RefreshError::Revoked);
        }
        Ok(Refreshed { user, source })
    }

    /// The algorithm of the signing key.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.keys.last().map(|k| k.alg)
    }
}
