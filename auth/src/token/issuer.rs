//! The built-in token server's core: signs access tokens (and refresh tokens) for a service and
//! publishes the public keys as a JWKS. Which scopes a user gets is decided by the caller
//! (see [`crate::AccessRules::grant`]).

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;
use serde_json::{Value, json};

use super::keys::KeySet;
use super::signing::SigningKey;
use super::verify::{Verifier, VerifyError};
use crate::scope::Scope;

/// Lifetime of refresh tokens.
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
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
}

/// Signs tokens for one service.
pub struct Issuer {
    issuer: String,
    service: String,
    lifetime: Duration,
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
            keys,
            refresh,
        })
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

    /// Issue an access token for `subject` (empty for anonymous) granting `access`, and a
    /// refresh token when `offline` is set.
    pub fn issue(&self, subject: &str, access: &[Scope], offline: bool) -> Result<Issued, String> {
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
        };
        let token = self.sign(&claims)?;
        let refresh_token = if offline && !subject.is_empty() {
            let sub = format!("{REFRESH_MARK}:{subject}");
            let rc = Claims {
                sub: &sub,
                exp: now + REFRESH_LIFETIME.as_secs(),
                jti: hex::encode(rand::random::<[u8; 16]>()),
                access: Vec::new(),
                typ: Some("refresh"),
                ..claims
            };
            Some(self.sign(&rc)?)
        } else {
            None
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

    /// The user a refresh token was issued to.
    pub fn refresh_subject(&self, refresh_token: &str) -> Result<String, VerifyError> {
        let grant = self.refresh.verify_uncached(refresh_token)?;
        grant
            .subject
            .as_deref()
            .and_then(|s| s.strip_prefix(REFRESH_MARK))
            .and_then(|s| s.strip_prefix(':'))
            .map(str::to_owned)
            .ok_or_else(|| VerifyError::Malformed("not a refresh token".into()))
    }

    /// The algorithm of the signing key.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.keys.last().map(|k| k.alg)
    }
}
