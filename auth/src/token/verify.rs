//! Verifying bearer tokens: signature, algorithm, issuer, audience and time claims, then the
//! `access` claim. Verified tokens are remembered by their hash until they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::keys::{ALLOWED, Key, KeySet};
use crate::scope::{Action, Scope};

/// Most remembered tokens.
const CACHE_CAPACITY: usize = 10_000;

/// Why a token is refused. The text is meant for the log line that explains a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not three base64url parts with JSON inside.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("token uses alg \"none\", which is never accepted")]
    AlgNone,
    /// An algorithm outside the accepted list (HS*, PS*, …).
    #[error("token uses alg {0}, which is not accepted (RS256/384/512, ES256/384, EdDSA are)")]
    AlgNotAccepted(String),
    /// No key has this `kid`.
    #[error("token signed by untrusted key: kid {kid:?} is not among the configured keys ({known})")]
    UnknownKid {
        /// The token's kid.
        kid: String,
        /// The kids that are configured.
        known: String,
    },
    /// No `kid`, no `x5c`, and more than one key.
    #[error("token has neither kid nor x5c, and more than one key is configured")]
    NoKid,
    /// The `x5c` chain does not verify.
    #[error("{0}")]
    X5c(String),
    /// The key is pinned to, or cannot do, another algorithm.
    #[error("token alg {alg:?} does not match key {kid:?} ({why})")]
    AlgMismatch {
        /// Header alg.
        alg: Algorithm,
        /// Key id.
        kid: String,
        /// Details.
        why: String,
    },
    /// Signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `iat` in the future.
    #[error("token was issued in the future (iat); check the clocks")]
    IssuedInFuture,
    /// Wrong `iss`.
    #[error("token issuer does not match auth.token.issuer")]
    Issuer,
    /// Wrong `aud`.
    #[error("token audience does not match auth.token.service")]
    Audience,
    /// A required claim is missing.
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
}

impl VerifyError {
    /// A short, stable name of the reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::AlgNone => "alg_none",
            VerifyError::AlgNotAccepted(_) => "alg_not_accepted",
            VerifyError::UnknownKid { .. } => "unknown_kid",
            VerifyError::NoKid => "no_kid",
            VerifyError::X5c(_) => "x5c",
            VerifyError::AlgMismatch { .. } => "alg_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::IssuedInFuture => "issued_in_future",
            VerifyError::Issuer => "issuer",
            VerifyError::Audience => "audience",
            VerifyError::MissingClaim(_) => "missing_claim",
        }
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `sub`.
    pub subject: Option<String>,
    /// The `access` claim.
    pub access: Vec<Scope>,
    /// `exp`, seconds since the epoch.
    pub expires: u64,
}

impl Grant {
    /// Whether the grant allows `action` on `resource_type:name`.
    pub fn allows(&self, resource_type: &str, name: &str, action: Action) -> bool {
        self.access.iter().any(|s| s.allows(resource_type, name, action))
    }
}

#[derive(Deserialize)]
struct RawAccess {
    #[serde(rename = "type")]
    resource_type: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    iat: Option<u64>,
    #[serde(default)]
    access: Vec<RawAccess>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    x5c: Option<Vec<String>>,
}

/// Checks tokens for one registry service.
pub struct Verifier {
    issuer: String,
    service: String,
    keys: parking_lot::RwLock<Arc<KeySet>>,
    leeway: Duration,
    cache: Mutex<HashMap<[u8; 32], Arc<Grant>>>,
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Verifier {
    /// A verifier; `keys` must not be empty.
    pub fn new(issuer: String, service: String, keys: KeySet, leeway: Duration) -> Verifier {
        Verifier {
            issuer,
            service,
            keys: parking_lot::RwLock::new(Arc::new(keys)),
            leeway,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The configured `kid`s (for messages).
    pub fn kids(&self) -> Vec<String> {
        self.keys.read().kids().into_iter().map(str::to_owned).collect()
    }

    /// Replace the key set (a JWKS fetched again). Tokens verified before stay cached until they
    /// expire.
    pub fn replace_keys(&self, keys: KeySet) {
        *self.keys.write() = Arc::new(keys);
    }

    /// Verify a token. A token verified before and not yet expired is answered from memory.
    pub fn verify(&self, token: &str) -> Result<Arc<Grant>, VerifyError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let t = now();
        if let Some(g) = self.cache.lock().get(&key)
            && g.expires > t
        {
            return Ok(g.clone());
        }
        let grant = Arc::new(self.verify_uncached(token)?);
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, g| g.expires > t);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, grant.clone());
        Ok(grant)
    }

    fn header(token: &str) -> Result<RawHeader, VerifyError> {
        let part = token.split('.').next().unwrap_or("");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| VerifyError::Malformed("header is not base64url".into()))?;
        serde_json::from_slice(&raw).map_err(|e| VerifyError::Malformed(format!("header: {e}")))
    }

    /// Full verification, no cache.
    pub fn verify_uncached(&self, token: &str) -> Result<Grant, VerifyError> {
        if token.split('.').count() != 3 {
            return Err(VerifyError::Malformed("a JWT has three dot-separated parts".into()));
        }
        let header = Self::header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(VerifyError::AlgNone);
        }
        let alg: Algorithm = header
            .alg
            .parse()
            .ok()
            .filter(|a| ALLOWED.contains(a))
            .ok_or_else(|| VerifyError::AlgNotAccepted(header.alg.clone()))?;
        let keys = self.keys.read().clone();
        let x5c_key;
        let (key, kid): (&Key, String) = match (&header.x5c, &header.kid) {
            (Some(chain), _) if !keys.roots.is_empty() => {
                x5c_key = keys.key_from_x5c(chain).map_err(VerifyError::X5c)?;
                (&x5c_key, "x5c".to_string())
            }
            (_, Some(kid)) => match keys.by_kid.get(kid) {
                Some(k) => (k.as_ref(), kid.clone()),
                None => {
                    return Err(VerifyError::UnknownKid {
                        kid: kid.clone(),
                        known: self.kids().join(", "),
                    });
                }
            },
            (_, None) => match &keys.sole {
                Some(k) => (k.as_ref(), "(only key)".to_string()),
                None => return Err(VerifyError::NoKid),
            },
        };
        if let Some(pinned) = key.alg
            && pinned != alg
        {
            return Err(VerifyError::AlgMismatch {
                alg,
                kid,
                why: format!("the JWKS pins it to {pinned:?}"),
            });
        }
        if !key.kind.fits(alg) {
            return Err(VerifyError::AlgMismatch {
                alg,
                kid,
                why: format!("it is a {:?} key", key.kind),
            });
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.service]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidIssuer => VerifyError::Issuer,
            ErrorKind::InvalidAudience => VerifyError::Audience,
            ErrorKind::MissingRequiredClaim(c) => VerifyError::MissingClaim(c.clone()),
            _ => VerifyError::Malformed(e.to_string()),
        })?;
        let claims = data.claims;
        if claims.iat.is_some_and(|iat| iat > now() + self.leeway.as_secs()) {
            return Err(VerifyError::IssuedInFuture);
        }
        let access = claims
            .access
            .into_iter()
            .filter_map(|a| {
                format!("{}:{}:{}", a.resource_type, a.name, a.actions.join(","))
                    .parse::<Scope>()
                    .ok()
            })
            .collect();
        Ok(Grant {
            subject: claims.sub,
            access,
            expires: claims.exp,
        })
    }
}
