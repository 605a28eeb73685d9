//! The `auth` section: the authentication mode, its users, token verification, the built-in
//! token server and the throttling of failed logins.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::ConfigError;
use super::tree::{env_names, get_bool, get_duration, get_file, get_list, get_path, get_str, get_usize};

/// How clients authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// Everyone may do everything.
    None,
    /// HTTP Basic against an htpasswd file (bcrypt only) and/or per-namespace secrets.
    Basic {
        /// Realm in the challenge.
        realm: String,
        /// Where the users are.
        users: UserSources,
    },
    /// Bearer tokens (JWT), optionally issued by the built-in token server.
    Token(Box<TokenConfig>),
}

/// Where users and their passwords come from (at least one is set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSources {
    /// htpasswd file (`auth.htpasswd.path`).
    pub htpasswd: Option<PathBuf>,
    /// Per-namespace secrets directory (`auth.secrets.directory`).
    pub secrets: Option<PathBuf>,
}

fn user_sources(tree: &Value, why: &str) -> Result<UserSources, ConfigError> {
    let users = UserSources {
        htpasswd: get_file(tree, "auth.htpasswd.path")?,
        secrets: get_file(tree, "auth.secrets.directory")?,
    };
    if users.htpasswd.is_none() && users.secrets.is_none() {
        return Err(ConfigError(format!(
            "auth.htpasswd.path (env REGISTRY_AUTH_HTPASSWD) or auth.secrets.directory (env REGISTRY_AUTH_SECRETS_DIRECTORY) is required {why}: create an htpasswd file with `htpasswd -Bc FILE USER` (or a directory of <namespace>/username and <namespace>/password files) and name it here"
        )));
    }
    Ok(users)
}

/// Token authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// Where clients get tokens.
    pub realm: String,
    /// The `aud` tokens must carry and the `service` clients send.
    pub service: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// Root certificates (x5c chains; key ids of their keys).
    pub rootcertbundle: Option<PathBuf>,
    /// JWKS file.
    pub jwks: Option<PathBuf>,
    /// JWKS URL, fetched at start, periodically and on an unknown `kid`.
    pub jwks_url: Option<String>,
    /// A single PEM public key.
    pub publickey: Option<PathBuf>,
    /// Clock leeway for exp/nbf/iat.
    pub leeway: Duration,
    /// The built-in token server.
    pub server: Option<TokenServerConfig>,
}

/// The built-in token server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenServerConfig {
    /// Signing keys, oldest first; the last signs.
    pub keys: Vec<PathBuf>,
    /// Certificate of the signing key (sent as `x5c`).
    pub certificate: Option<PathBuf>,
    /// Path of the token endpoint.
    pub path: String,
    /// Token lifetime.
    pub expiration: Duration,
    /// Refresh-token lifetime.
    pub refresh_expiration: Duration,
    /// `kid` format: thumbprint or libtrust.
    pub kid: String,
    /// The users who may log in.
    pub users: UserSources,
}

fn need(tree: &Value, path: &str, why: &str) -> Result<String, ConfigError> {
    match get_str(tree, path)?.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Ok(v.to_owned()),
        None => Err(ConfigError(format!(
            "{path}{} is required in token mode: {why}",
            env_names(path)
        ))),
    }
}

fn token_config(tree: &Value) -> Result<TokenConfig, ConfigError> {
    let realm = need(
        tree,
        "auth.token.realm",
        "clients fetch tokens from this URL, e.g. https://registry.example.com/auth",
    );
    let service = need(
        tree,
        "auth.token.service",
        "it is sent in the challenge and must be the tokens' audience (without it clients fail with \"Missing service parameter\")",
    );
    let issuer = need(tree, "auth.token.issuer", "tokens must carry this iss claim");
    let (realm, service, issuer) = match (realm, service, issuer) {
        (Ok(r), Ok(s), Ok(i)) => (r, s, i),
        (r, s, i) => {
            let missing: Vec<String> = [r.err(), s.err(), i.err()].into_iter().flatten().map(|e| e.0).collect();
            return Err(ConfigError(missing.join("\n")));
        }
    };
    let server_enabled = get_bool(tree, "auth.token.server.enabled", false)?;
    let server = if server_enabled {
        let keys: Vec<PathBuf> = get_list(tree, "auth.token.server.key", "a file name", "file names")?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        if keys.is_empty() {
            return Err(ConfigError(format!(
                "auth.token.server.key{} is required when the token server is enabled: name the PEM private key(s) that sign tokens (create one with `berth keygen`)",
                env_names("auth.token.server.key")
            )));
        }
        let users = user_sources(tree, "when the token server is enabled, for the users who may log in")?;
        let kid = get_str(tree, "auth.token.server.kid")?
            .unwrap_or("thumbprint")
            .to_ascii_lowercase();
        if kid != "thumbprint" && kid != "libtrust" {
            return Err(ConfigError(format!(
                "auth.token.server.kid: {kid:?} is not thumbprint or libtrust"
            )));
        }
        let endpoint = get_str(tree, "auth.token.server.path")?.unwrap_or("/auth").to_owned();
        if !endpoint.starts_with('/') || endpoint.starts_with("/v2") || endpoint == "/" {
            return Err(ConfigError(format!(
                "auth.token.server.path: {endpoint:?} must start with / and not be under /v2"
            )));
        }
        Some(TokenServerConfig {
            keys,
            certificate: get_file(tree, "auth.token.server.certificate")?,
            path: endpoint,
            expiration: get_duration(tree, "auth.token.server.expiration", Duration::from_secs(300))?,
            refresh_expiration: refresh_expiration(tree)?,
            kid,
            users,
        })
    } else {
        None
    };
    let cfg = TokenConfig {
        realm,
        service,
        issuer,
        rootcertbundle: get_file(tree, "auth.token.rootcertbundle")?,
        jwks: get_file(tree, "auth.token.jwks")?,
        jwks_url: match get_str(tree, "auth.token.jwksurl")?
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(u) if (u.starts_with("http://") || u.starts_with("https://")) && u.parse::<http::Uri>().is_ok() => {
                Some(u.to_owned())
            }
            Some(u) => {
                return Err(ConfigError(format!(
                    "auth.token.jwksurl (env REGISTRY_AUTH_TOKEN_JWKSURL): {u:?} is not an http:// or https:// URL"
                )));
            }
        },
        publickey: get_file(tree, "auth.token.publickey")?,
        leeway: get_duration(tree, "auth.token.leeway", Duration::from_secs(60))?,
        server,
    };
    if cfg.rootcertbundle.is_none()
        && cfg.jwks.is_none()
        && cfg.jwks_url.is_none()
        && cfg.publickey.is_none()
        && cfg.server.is_none()
    {
        return Err(ConfigError(
            "token mode needs a key to verify tokens with: set auth.token.jwks (env REGISTRY_AUTH_TOKEN_JWKS), auth.token.jwksurl (env REGISTRY_AUTH_TOKEN_JWKSURL), auth.token.rootcertbundle (env REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE) or auth.token.publickey (env REGISTRY_AUTH_TOKEN_PUBLICKEY), or enable the built-in token server (auth.token.server.enabled: true with auth.token.server.key)".into(),
        ));
    }
    Ok(cfg)
}

/// Longest `auth.token.server.refreshexpiration` taken.
const MAX_REFRESH_EXPIRATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn refresh_expiration(tree: &Value) -> Result<Duration, ConfigError> {
    let path = "auth.token.server.refreshexpiration";
    let d = get_duration(tree, path, berth_auth::token::issuer::REFRESH_LIFETIME)?;
    if d < Duration::from_secs(60) || d > MAX_REFRESH_EXPIRATION {
        return Err(ConfigError(format!(
            "{path}{}: {}s is out of range; use a duration from 60s to 8784h (366 days), e.g. 720h for 30 days",
            env_names(path),
            d.as_secs()
        )));
    }
    Ok(d)
}

/// Decide the auth mode: `REGISTRY_AUTH_TYPE` wins over the file; otherwise the section that is
/// present. With `none` chosen explicitly, auth sections of the file are dropped.
pub(super) fn auth_config(tree: &mut Value, auth_type: Option<&str>) -> Result<AuthConfig, ConfigError> {
    let has = |tree: &Value, p: &str| get_path(tree, p).is_some();
    if has(tree, "auth.silly") {
        return Err(ConfigError(
            "auth.silly: silly authentication is for testing distribution only and is not offered by Berth; use auth.htpasswd or auth.token".into(),
        ));
    }
    if let Some(Value::Object(methods)) = get_path(tree, "auth")
        && let Some(other) = methods
            .keys()
            .find(|k| !["htpasswd", "token", "secrets", "throttle"].contains(&k.as_str()))
    {
        return Err(ConfigError(format!(
            "auth.{other}: unknown authentication method; Berth offers auth.htpasswd and auth.secrets (basic) and auth.token"
        )));
    }
    let kind = match auth_type {
        Some(t) => t.to_owned(),
        None if has(tree, "auth.token") => "token".into(),
        None if has(tree, "auth.htpasswd") || has(tree, "auth.secrets") => "basic".into(),
        None => "none".into(),
    };
    match kind.as_str() {
        "none" | "" => {
            if let Some(obj) = tree.as_object_mut() {
                obj.remove("auth");
            }
            Ok(AuthConfig::None)
        }
        "basic" | "htpasswd" => {
            let users = user_sources(tree, "for basic authentication")?;
            let realm = get_str(tree, "auth.htpasswd.realm")?
                .unwrap_or("Berth Registry")
                .to_owned();
            Ok(AuthConfig::Basic { realm, users })
        }
        "token" => Ok(AuthConfig::Token(Box::new(token_config(tree)?))),
        other => Err(ConfigError(format!(
            "REGISTRY_AUTH_TYPE: {other:?} is not one of none, basic, token"
        ))),
    }
}

/// `auth.throttle.*`.
pub(super) fn throttle_settings(tree: &Value) -> Result<berth_auth::ThrottleConfig, ConfigError> {
    let d = berth_auth::ThrottleConfig::default();
    let count = |path: &str, default: u32| -> Result<u32, ConfigError> {
        let n = get_usize(tree, path, default as usize)?;
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                ConfigError(format!(
                    "{path}{}: {n} is out of range; use 1 to 1000000",
                    env_names(path)
                ))
            })
    };
    let path = "auth.throttle.maxbackoff";
    let max_backoff = get_duration(tree, path, d.max_backoff)?;
    if max_backoff < Duration::from_secs(1) || max_backoff > Duration::from_secs(24 * 3600) {
        return Err(ConfigError(format!(
            "{path}{}: use a duration from 1s to 24h, e.g. 15m",
            env_names(path)
        )));
    }
    Ok(berth_auth::ThrottleConfig {
        enabled: get_bool(tree, "auth.throttle.enabled", d.enabled)?,
        free_attempts: count("auth.throttle.freeattempts", d.free_attempts)?,
        address_free_attempts: count("auth.throttle.addressfreeattempts", d.address_free_attempts)?,
        max_backoff,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testing::load_str;
    use super::super::{Source, load};
    use super::*;

    #[test]
    fn auth_modes() {
        let htpasswd = |p: &str| UserSources {
            htpasswd: Some(p.into()),
            secrets: None,
        };
        let (c, _) = load_str("auth: {htpasswd: {realm: r, path: /p}}", &[]).unwrap();
        assert_eq!(
            c.auth,
            AuthConfig::Basic {
                realm: "r".into(),
                users: htpasswd("/p")
            }
        );
        let (c, _) = load_str("", &[("REGISTRY_AUTH_TYPE", "basic"), ("REGISTRY_AUTH_HTPASSWD", "/h")]).unwrap();
        assert_eq!(
            c.auth,
            AuthConfig::Basic {
                realm: "Berth Registry".into(),
                users: htpasswd("/h")
            }
        );
        let e = load_str("", &[("REGISTRY_AUTH_TYPE", "basic")]).unwrap_err().0;
        assert!(
            e.contains("REGISTRY_AUTH_HTPASSWD") && e.contains("REGISTRY_AUTH_SECRETS_DIRECTORY"),
            "{e}"
        );
        let (c, _) = load_str("auth: {htpasswd: {path: /p}}", &[("REGISTRY_AUTH_TYPE", "none")]).unwrap();
        assert_eq!(c.auth, AuthConfig::None);
        assert!(load_str("", &[("REGISTRY_AUTH_TYPE", "magic")]).is_err());
        // Namespace secrets alone make basic mode; with htpasswd both are used.
        let (c, _) = load_str("", &[("REGISTRY_AUTH_SECRETS_DIRECTORY", "/run/secrets/registry")]).unwrap();
        assert_eq!(
            c.auth,
            AuthConfig::Basic {
                realm: "Berth Registry".into(),
                users: UserSources {
                    htpasswd: None,
                    secrets: Some("/run/secrets/registry".into())
                }
            }
        );
        let (c, _) = load_str("auth: {htpasswd: {path: /h}, secrets: {directory: /s}}", &[]).unwrap();
        assert!(matches!(
            c.auth,
            AuthConfig::Basic {
                users: UserSources {
                    htpasswd: Some(_),
                    secrets: Some(_)
                },
                ..
            }
        ));
    }

    #[test]
    fn token_mode_names_what_is_missing() {
        let e = load_str("auth: {token: {realm: r, issuer: i, jwks: /j}}", &[])
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("auth.token.service (env REGISTRY_AUTH_TOKEN_SERVICE) is required"),
            "{e}"
        );
        assert!(e.contains("Missing service parameter"), "{e}");
        let e = load_str("", &[("REGISTRY_AUTH_TYPE", "token")]).unwrap_err().0;
        assert!(e.contains("REGISTRY_AUTH_TOKEN_REALM"), "{e}");
        let base = [
            ("REGISTRY_AUTH_TOKEN_REALM", "https://r/auth"),
            ("REGISTRY_AUTH_TOKEN_SERVICE", "s"),
            ("REGISTRY_AUTH_TOKEN_ISSUER", "i"),
        ];
        let e = load_str("", &base).unwrap_err().0;
        assert!(
            e.contains("REGISTRY_AUTH_TOKEN_JWKS") && e.contains("auth.token.server.enabled"),
            "{e}"
        );
        let mut with_jwks = base.to_vec();
        with_jwks.push(("REGISTRY_AUTH_TOKEN_JWKS", "/j.json"));
        let (c, _) = load_str("", &with_jwks).unwrap();
        let AuthConfig::Token(t) = c.auth else {
            panic!("not token mode")
        };
        assert_eq!(t.jwks, Some(PathBuf::from("/j.json")));
        assert!(t.server.is_none());
        let mut server = base.to_vec();
        server.push(("REGISTRY_AUTH_TOKEN_SERVER_ENABLED", "true"));
        let e = load_str("", &server).unwrap_err().0;
        assert!(e.contains("REGISTRY_AUTH_TOKEN_SERVER_KEY"), "{e}");
        server.push(("REGISTRY_AUTH_TOKEN_SERVER_KEY", "/old.pem, /new.pem"));
        let e = load_str("", &server).unwrap_err().0;
        assert!(e.contains("REGISTRY_AUTH_HTPASSWD"), "{e}");
        server.push(("REGISTRY_AUTH_HTPASSWD", "/h"));
        server.push(("REGISTRY_TOKEN_EXPIRY", "600"));
        let (c, _) = load_str("", &server).unwrap();
        let AuthConfig::Token(t) = c.auth else {
            panic!("not token mode")
        };
        let s = t.server.unwrap();
        assert_eq!(s.keys, vec![PathBuf::from("/old.pem"), PathBuf::from("/new.pem")]);
        assert_eq!(s.expiration, Duration::from_secs(600));
        assert_eq!(s.path, "/auth");
        assert_eq!(s.refresh_expiration, Duration::from_secs(90 * 24 * 3600));
        server.push(("REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION", "720h"));
        let (c, _) = load_str("", &server).unwrap();
        let AuthConfig::Token(t) = c.auth else {
            panic!("not token mode")
        };
        assert_eq!(
            t.server.unwrap().refresh_expiration,
            Duration::from_secs(30 * 24 * 3600)
        );
        for bad in ["0s", "10s", "9000h", "forever"] {
            server.retain(|(k, _)| *k != "REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION");
            server.push(("REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION", bad));
            let e = load_str("", &server).unwrap_err().0;
            assert!(
                e.contains("auth.token.server.refreshexpiration (env REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION)"),
                "{bad}: {e}"
            );
        }
        // From a file, the message names the file too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(
            &file,
            "auth:\n  token:\n    realm: r\n    service: s\n    issuer: i\n    server:\n      enabled: true\n      key: /k.pem\n      refreshexpiration: 5s\n  htpasswd:\n    path: /h\n",
        )
        .unwrap();
        let e = load(Source::File(&file), &BTreeMap::new()).unwrap_err().0;
        assert!(
            e.contains(&file.display().to_string()) && e.contains("auth.token.server.refreshexpiration"),
            "{e}"
        );
    }

    #[test]
    fn throttle_settings() {
        let (c, _) = load_str("", &[]).unwrap();
        assert_eq!(c.auth_throttle, berth_auth::ThrottleConfig::default());
        let (c, w) = load_str(
            "auth: {throttle: {freeattempts: 3, maxbackoff: 2m}, htpasswd: {path: /h}}",
            &[("REGISTRY_AUTH_THROTTLE_ADDRESSFREEATTEMPTS", "50")],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(
            matches!(c.auth, AuthConfig::Basic { .. }),
            "throttle is not an auth method"
        );
        assert_eq!(
            (c.auth_throttle.free_attempts, c.auth_throttle.address_free_attempts),
            (3, 50)
        );
        assert_eq!(c.auth_throttle.max_backoff, Duration::from_secs(120));
        let (c, _) = load_str("", &[("REGISTRY_AUTH_THROTTLE_ENABLED", "false")]).unwrap();
        assert!(!c.auth_throttle.enabled);
        for (k, v) in [
            ("REGISTRY_AUTH_THROTTLE_FREEATTEMPTS", "0"),
            ("REGISTRY_AUTH_THROTTLE_ADDRESSFREEATTEMPTS", "many"),
            ("REGISTRY_AUTH_THROTTLE_MAXBACKOFF", "0s"),
            ("REGISTRY_AUTH_THROTTLE_ENABLED", "perhaps"),
        ] {
            let e = load_str("", &[(k, v)]).unwrap_err().0;
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }
}
