//! Configuration: a distribution-compatible `config.yml`, `REGISTRY_*` environment overrides and
//! the short variable names users know, turned into a validated [`Config`] in one function.
//! Every error names the setting (and its variable) and says what to do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// One documented setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted path in `config.yml` (`-` for a setting that exists only as a variable).
    pub path: &'static str,
    /// Environment variables that set it (first is the canonical one).
    pub env: &'static [&'static str],
    /// Default, as shown to users.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every setting Berth reads. `docs/configuration.md` documents exactly these.
pub const SETTINGS: &[Setting] = &[
    Setting {
        path: "version",
        env: &[],
        default: "0.1",
        doc: "Configuration format version (accepted for compatibility).",
    },
    Setting {
        path: "log.level",
        env: &["REGISTRY_LOG_LEVEL"],
        default: "info",
        doc: "error, warn, info, debug or trace.",
    },
    Setting {
        path: "log.formatter",
        env: &["REGISTRY_LOG_FORMATTER"],
        default: "text",
        doc: "text or json.",
    },
    Setting {
        path: "log.accesslog.disabled",
        env: &["REGISTRY_LOG_ACCESSLOG_DISABLED"],
        default: "false",
        doc: "Turn off the one-line-per-request log.",
    },
    Setting {
        path: "http.addr",
        env: &["REGISTRY_HTTP_ADDR"],
        default: "0.0.0.0:5000",
        doc: "Listen address, host:port (`:5000` means all interfaces).",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_HOST"],
        default: "(from http.addr)",
        doc: "Listen host only; overrides the host part of http.addr.",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_PORT"],
        default: "(from http.addr)",
        doc: "Listen port only; overrides the port part of http.addr. A Kubernetes service link value such as tcp://10.0.0.7:5000 is ignored with a warning.",
    },
    Setting {
        path: "http.secret",
        env: &["REGISTRY_HTTP_SECRET"],
        default: "(none)",
        doc: "Accepted for compatibility; Berth's upload URLs need no signing secret.",
    },
    Setting {
        path: "storage.filesystem.rootdirectory",
        env: &["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "REGISTRY_STORAGE_PATH"],
        default: "./data",
        doc: "Directory for blobs, upload sessions and metadata.",
    },
    Setting {
        path: "storage.delete.enabled",
        env: &["REGISTRY_STORAGE_DELETE_ENABLED"],
        default: "false",
        doc: "Allow DELETE of blobs, manifests and tags (405 UNSUPPORTED otherwise).",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.age",
        env: &[
            "REGISTRY_UPLOAD_TIMEOUT",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE",
        ],
        default: "3600s",
        doc: "An upload session idle this long is removed. Seconds, or a duration such as 90m.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.interval",
        env: &[
            "REGISTRY_UPLOAD_CLEANUP_INTERVAL",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_INTERVAL",
        ],
        default: "300s",
        doc: "How often idle upload sessions are looked for.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED"],
        default: "true",
        doc: "Remove idle upload sessions.",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_AUTH_TYPE"],
        default: "token when auth.token is set, else basic when auth.htpasswd or auth.secrets is set, else none",
        doc: "none, basic or token: the authentication mode, whatever sections the file has.",
    },
    Setting {
        path: "auth.htpasswd.path",
        env: &["REGISTRY_AUTH_HTPASSWD_PATH", "REGISTRY_AUTH_HTPASSWD"],
        default: "(none)",
        doc: "htpasswd file for basic authentication; bcrypt hashes only (`htpasswd -B`). Re-read within seconds when it changes.",
    },
    Setting {
        path: "auth.htpasswd.realm",
        env: &["REGISTRY_AUTH_HTPASSWD_REALM", "REGISTRY_AUTH_REALM"],
        default: "Berth Registry",
        doc: "Realm sent in the Basic challenge.",
    },
    Setting {
        path: "auth.secrets.directory",
        env: &["REGISTRY_AUTH_SECRETS_DIRECTORY"],
        default: "(none)",
        doc: "Directory of per-namespace credentials: each subfolder <namespace>/ holds files username and password (a mounted Kubernetes Secret). Such a user may pull and push under <namespace> and <namespace>/** (access rules can grant more). Used in basic mode and by the built-in token server, alongside auth.htpasswd.path; re-read every 2 seconds.",
    },
    Setting {
        path: "http.tls.certificate",
        env: &["REGISTRY_HTTP_TLS_CERTIFICATE"],
        default: "(none: plain HTTP)",
        doc: "PEM certificate chain (leaf first); with http.tls.key, the listener speaks TLS (HTTP/2 and HTTP/1.1 by ALPN). Re-read within seconds when it changes.",
    },
    Setting {
        path: "http.tls.key",
        env: &["REGISTRY_HTTP_TLS_KEY"],
        default: "(none)",
        doc: "PEM private key of the certificate (PKCS#8, RSA or EC).",
    },
    Setting {
        path: "http.tls.clientcas",
        env: &["REGISTRY_HTTP_TLS_CLIENTCAS"],
        default: "(none)",
        doc: "PEM CA certificates (list; comma-separated in the variable): clients must present a certificate signed by one of them (mutual TLS).",
    },
    Setting {
        path: "http.tls.minimumtls",
        env: &["REGISTRY_HTTP_TLS_MINIMUMTLS"],
        default: "tls1.2",
        doc: "Oldest TLS version accepted: tls1.2 or tls1.3.",
    },
    Setting {
        path: "http.debug.prometheus.enabled",
        env: &["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"],
        default: "true",
        doc: "Serve Prometheus metrics (requests, latency histograms, bytes, auth failures, uploads in progress, storage size), without credentials.",
    },
    Setting {
        path: "http.debug.prometheus.path",
        env: &["REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH"],
        default: "/metrics",
        doc: "Path of the metrics; must start with / and not be under /v2.",
    },
    Setting {
        path: "http.debug.addr",
        env: &["REGISTRY_HTTP_DEBUG_ADDR"],
        default: "(none)",
        doc: "A second listener (host:port) that serves only the metrics; when set, the main listener does not serve them.",
    },
    Setting {
        path: "http.timeouts.header",
        env: &["REGISTRY_HTTP_TIMEOUTS_HEADER"],
        default: "30s",
        doc: "Time a client may take to send a request's headers; slower clients are disconnected.",
    },
    Setting {
        path: "http.timeouts.body",
        env: &["REGISTRY_HTTP_TIMEOUTS_BODY"],
        default: "60s",
        doc: "Longest pause in a request body (upload or manifest); a stalled body ends the request with 400 and the upload session keeps what it had before that request.",
    },
    Setting {
        path: "http.limits.concurrentrequests",
        env: &["REGISTRY_HTTP_LIMITS_CONCURRENTREQUESTS"],
        default: "8192",
        doc: "Most registry requests handled at once; more are answered 429 TOOMANYREQUESTS with Retry-After: 1 (health, readiness and metrics are not counted). 0: no limit.",
    },
    Setting {
        path: "http.limits.uploadsperclient",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADSPERCLIENT"],
        default: "1000",
        doc: "Most upload sessions one client may have open at once (a user; an anonymous client by its address). A session is open from its POST until it is completed, cancelled or purged (storage.maintenance.uploadpurging). More are answered 429 TOOMANYREQUESTS with Retry-After; nothing stored is affected. 0: no limit.",
    },
    Setting {
        path: "http.limits.uploadsperrepository",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADSPERREPOSITORY"],
        default: "2000",
        doc: "Most upload sessions open at once in one repository; as uploadsperclient. 0: no limit.",
    },
    Setting {
        path: "http.limits.uploads",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADS"],
        default: "10000",
        doc: "Most upload sessions open at once in this process; as uploadsperclient. 0: no limit.",
    },
    Setting {
        path: "http.limits.bodyminrate",
        env: &["REGISTRY_HTTP_LIMITS_BODYMINRATE"],
        default: "1024",
        doc: "Slowest request body accepted, in bytes per second, averaged over each period of http.timeouts.body: a body that drips (a byte every few seconds) is cut when a period brings less, instead of being kept alive by each byte. The request fails as a stalled one does. 0: only the pause limit applies.",
    },
    Setting {
        path: "http.timeouts.bodytotal",
        env: &["REGISTRY_HTTP_TIMEOUTS_BODYTOTAL"],
        default: "0 (none)",
        doc: "Longest time one request body may take in all; longer bodies are cut as stalled ones are. 0: no limit (uploads of any size at any rate above http.limits.bodyminrate).",
    },
    Setting {
        path: "http.limits.drain",
        env: &["REGISTRY_HTTP_LIMITS_DRAIN"],
        default: "67108864",
        doc: "Bytes of a request body that Berth reads and discards when it answers before reading the body (401, 404, 413, 416, 429…), so that a client that writes its whole body before reading gets the answer instead of a reset connection. A body declared larger, or not done within http.timeouts.drain, is not drained: the answer is sent and the connection closed. 0: never drain.",
    },
    Setting {
        path: "http.timeouts.drain",
        env: &["REGISTRY_HTTP_TIMEOUTS_DRAIN"],
        default: "10s",
        doc: "Longest time spent draining an unread request body (see http.limits.drain).",
    },
    Setting {
        path: "http.trustedproxies",
        env: &["REGISTRY_HTTP_TRUSTEDPROXIES"],
        default: "(none)",
        doc: "Addresses or networks of reverse proxies (list, or comma-separated in the variable). When the peer is one of them, the client address for access rules with ips is the nearest untrusted address of X-Forwarded-For.",
    },
    Setting {
        path: "accesscontrol.enabled",
        env: &["REGISTRY_ACCESS_CONTROL_ENABLED"],
        default: "true when accesscontrol.config is set",
        doc: "Apply repository access rules.",
    },
    Setting {
        path: "accesscontrol.config",
        env: &["REGISTRY_ACCESS_CONTROL_CONFIG"],
        default: "(none)",
        doc: "JSON file of access rules (defaultPolicy, adminUsers, anonymous, rules); see docs/auth.md.",
    },
    Setting {
        path: "auth.throttle.enabled",
        env: &["REGISTRY_AUTH_THROTTLE_ENABLED"],
        default: "true",
        doc: "Throttle failed logins (Basic on registry requests and the built-in token server): after the free attempts, each failure doubles the wait (1 s, 2 s, 4 s, … up to auth.throttle.maxbackoff) before that user name at that client address, or that address, may try again; attempts during the wait get 429 TOOMANYREQUESTS with Retry-After, without checking the password.",
    },
    Setting {
        path: "auth.throttle.freeattempts",
        env: &["REGISTRY_AUTH_THROTTLE_FREEATTEMPTS"],
        default: "5",
        doc: "Failed logins of one user name from one client address before back-off starts. A success resets it. The same user at another address is not affected.",
    },
    Setting {
        path: "auth.throttle.addressfreeattempts",
        env: &["REGISTRY_AUTH_THROTTLE_ADDRESSFREEATTEMPTS"],
        default: "20",
        doc: "Failed logins from one client address (all user names together; IPv6 by /64) before back-off starts for that address; raise it when many users share one address (NAT, a proxy not listed in http.trustedproxies).",
    },
    Setting {
        path: "auth.throttle.maxbackoff",
        env: &["REGISTRY_AUTH_THROTTLE_MAXBACKOFF"],
        default: "15m",
        doc: "Longest wait after repeated failures. A key that has not failed for twice this (at least a minute) is forgotten.",
    },
    Setting {
        path: "auth.token.realm",
        env: &["REGISTRY_AUTH_TOKEN_REALM"],
        default: "(required in token mode)",
        doc: "URL of the token endpoint, sent in the Bearer challenge (with the built-in server: this registry's URL + auth.token.server.path).",
    },
    Setting {
        path: "auth.token.service",
        env: &["REGISTRY_AUTH_TOKEN_SERVICE"],
        default: "(required in token mode)",
        doc: "Service name: sent in the challenge, expected as the tokens' aud.",
    },
    Setting {
        path: "auth.token.issuer",
        env: &["REGISTRY_AUTH_TOKEN_ISSUER"],
        default: "(required in token mode)",
        doc: "Expected iss of tokens (and the iss the built-in server writes).",
    },
    Setting {
        path: "auth.token.rootcertbundle",
        env: &["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"],
        default: "(none)",
        doc: "PEM certificates: tokens with an x5c chain ending at one of them, or a kid equal to the RFC 7638 thumbprint or libtrust fingerprint of one of their keys, are trusted.",
    },
    Setting {
        path: "auth.token.jwks",
        env: &["REGISTRY_AUTH_TOKEN_JWKS"],
        default: "(none)",
        doc: "JWKS file; tokens are matched to its keys by kid, and a key's alg (if given) must equal the token's.",
    },
    Setting {
        path: "auth.token.jwksurl",
        env: &["REGISTRY_AUTH_TOKEN_JWKSURL"],
        default: "(none)",
        doc: "URL of a JWKS (http or https), fetched at start, every 5 minutes, and again (at most every 10 s) when a token names an unknown kid.",
    },
    Setting {
        path: "auth.token.publickey",
        env: &["REGISTRY_AUTH_TOKEN_PUBLICKEY"],
        default: "(none)",
        doc: "One PEM public key (or certificate); tokens without kid are verified with it when it is the only key.",
    },
    Setting {
        path: "auth.token.leeway",
        env: &["REGISTRY_AUTH_TOKEN_LEEWAY"],
        default: "60s",
        doc: "Clock skew allowed when checking exp, nbf and iat.",
    },
    Setting {
        path: "auth.token.server.enabled",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_ENABLED"],
        default: "false",
        doc: "Run the built-in token server in this process (users from auth.htpasswd.path and auth.secrets.directory, grants from the access rules).",
    },
    Setting {
        path: "auth.token.server.key",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_KEY"],
        default: "(required with the server)",
        doc: "PEM (PKCS#8) signing key file(s), oldest first, comma-separated in the variable; the last one signs, all verify. `berth keygen` makes one.",
    },
    Setting {
        path: "auth.token.server.certificate",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE"],
        default: "(none)",
        doc: "Certificate of the signing key; when set, tokens carry it as x5c so registries with this certificate in their rootcertbundle (distribution 2.x and 3.x) accept them.",
    },
    Setting {
        path: "auth.token.server.path",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_PATH"],
        default: "/auth",
        doc: "Path of the token endpoint (the JWKS is served at /.well-known/jwks.json).",
    },
    Setting {
        path: "auth.token.server.expiration",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_EXPIRATION", "REGISTRY_TOKEN_EXPIRY"],
        default: "300s",
        doc: "Lifetime of issued access tokens.",
    },
    Setting {
        path: "auth.token.server.refreshexpiration",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION"],
        default: "2160h (90 days)",
        doc: "Lifetime of refresh tokens (docker login's stored credential), from 60s to 8784h. A refresh token also stops working as soon as its user's password (htpasswd entry or secret) changes or the user is removed.",
    },
    Setting {
        path: "auth.token.server.kid",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_KID"],
        default: "thumbprint",
        doc: "kid of issued tokens: thumbprint (RFC 7638) or libtrust (distribution 2.x fingerprint).",
    },
    Setting {
        path: "storage.maintenance.gc.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED"],
        default: "false",
        doc: "Online garbage collection: every interval, remove blob links no manifest of the repository references (and blob files no repository links any more), sparing anything younger than the grace period. Safe while pushes run.",
    },
    Setting {
        path: "storage.maintenance.gc.interval",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL"],
        default: "24h",
        doc: "Time between two online collections (the first runs one interval after start).",
    },
    Setting {
        path: "storage.maintenance.gc.grace",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_GRACE"],
        default: "1h",
        doc: "Blobs and manifests linked or pushed less than this long ago are never collected (an upload whose manifest is still to come).",
    },
    Setting {
        path: "storage.maintenance.gc.untagged",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_UNTAGGED"],
        default: "false",
        doc: "Also remove manifests no tag reaches (directly, through an index, or as a referrer of a reached manifest), then their blobs.",
    },
    Setting {
        path: "storage.maintenance.readonly.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED"],
        default: "false",
        doc: "Read-only maintenance mode: pulls work; pushes, mounts and deletes answer 405 UNSUPPORTED saying so; idle upload sessions are kept.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.dryrun",
        env: &["REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN"],
        default: "false",
        doc: "When true, idle upload sessions are kept (purging is off).",
    },
    Setting {
        path: "http.headers.<Name>",
        env: &["REGISTRY_HTTP_HEADERS_<Name>"],
        default: "(none)",
        doc: "Headers added to every response: a list of values per name (the variable takes a YAML list such as ['*'] or a single value). With Access-Control-Allow-Origin set, OPTIONS preflights on /v2/ are answered (204, no credentials needed) and responses expose Docker-Content-Digest, Location, Range, Link, Docker-Upload-UUID and WWW-Authenticate to browsers.",
    },
    Setting {
        path: "pagination.defaultlimit",
        env: &["REGISTRY_PAGINATION_DEFAULT_LIMIT"],
        default: "100",
        doc: "Page size of tag lists and the catalog when the client gives no n.",
    },
    Setting {
        path: "pagination.maxlimit",
        env: &["REGISTRY_PAGINATION_MAX_LIMIT"],
        default: "1000",
        doc: "Largest page; a larger n is capped to it.",
    },
];

/// Sections of distribution's format that Berth reads but does not act on (yet); they are
/// accepted with a warning rather than refused.
const IGNORED_SECTIONS: &[&str] = &[
    "http.prefix",
    "auth.token.autoredirect",
    "auth.token.autoredirectpath",
    "auth.token.signingalgorithms",
    "notifications",
    "redis",
    "health",
    "validation",
    "compatibility",
    "reporting",
    "middleware",
    "storage.cache",
    "storage.redirect",
    "storage.tag",
    "http.relativeurls",
    "http.tls.ciphersuites",
    "http.draintimeout",
    "http.net",
    "http.host",
    "log.fields",
    "log.hooks",
    "log.reportcaller",
    "loglevel",
];

/// Sections that change security or transport and that this version cannot honour: starting
/// without them would expose the registry, so start-up stops with a message instead.
const UNSUPPORTED_SECTIONS: &[(&str, &str)] = &[
    (
        "proxy",
        "pull-through caching (proxy) is not available in this version of Berth; remove the proxy section to run an ordinary registry",
    ),
    (
        "http.tls.letsencrypt",
        "automatic certificates (Let's Encrypt) are not available in this version of Berth; obtain the certificate with an ACME client (certbot, lego) and name it in http.tls.certificate and http.tls.key (Berth reloads it when it is renewed)",
    ),
];

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

/// A list setting: a YAML list, a comma-separated string, or (from a variable) a YAML list in a
/// string such as `"['a', 'b']"`. `one` and `many` name the items in messages.
fn get_list(tree: &Value, path: &str, one: &str, many: &str) -> Result<Vec<String>, ConfigError> {
    let value = match get_path(tree, path) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) if s.trim_start().starts_with('[') => parse_yaml_value(s),
        Some(v) => v.clone(),
    };
    match value {
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(path, &format!("a list of {many}"), v))
            })
            .collect(),
        v => Err(bad(path, &format!("{one} or a list of {many}"), &v)),
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
fn auth_config(tree: &mut Value, auth_type: Option<&str>) -> Result<AuthConfig, ConfigError> {
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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it came from, if any.
    pub file: Option<PathBuf>,
    /// How that file was chosen.
    pub file_origin: Option<FileOrigin>,
    /// Authentication.
    pub auth: AuthConfig,
    /// Access rules file, when access control is on.
    pub access_rules: Option<PathBuf>,
    /// Listen address.
    pub addr: SocketAddr,
    /// Storage root.
    pub root: PathBuf,
    /// Whether deletes are allowed.
    pub delete_enabled: bool,
    /// Log filter level.
    pub log_level: String,
    /// JSON logs.
    pub log_json: bool,
    /// One log line per request.
    pub access_log: bool,
    /// Idle upload session lifetime.
    pub upload_timeout: Duration,
    /// Reaper interval.
    pub upload_cleanup_interval: Duration,
    /// Whether idle sessions are reaped.
    pub upload_purging: bool,
    /// Default page size.
    pub page_default: usize,
    /// Largest page size.
    pub page_max: usize,
    /// Headers added to every response (`http.headers`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Read-only maintenance mode: writes are refused.
    pub read_only: bool,
    /// Time to send request headers.
    pub header_timeout: Duration,
    /// Longest pause in a request body.
    pub body_timeout: Duration,
    /// Most requests at once (0: unlimited).
    pub max_requests: usize,
    /// Caps on open upload sessions.
    pub upload_limits: berth_engine::UploadLimits,
    /// What an unread request body may cost to drain, and what a request body must deliver.
    pub body_limits: BodyLimits,
    /// Interval of online garbage collection (`None`: off).
    pub gc_interval: Option<Duration>,
    /// Garbage collection options (grace period, untagged), online and for `berth gc`.
    pub gc: berth_engine::GcOptions,
    /// TLS for the listener.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Path of the Prometheus metrics; `None` when turned off.
    pub metrics_path: Option<String>,
    /// Separate listener for the metrics (`http.debug.addr`).
    pub debug_addr: Option<SocketAddr>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`http.trustedproxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Throttling of failed logins (`auth.throttle.*`).
    pub auth_throttle: berth_auth::ThrottleConfig,
}

/// `auth.throttle.*`.
fn throttle_settings(tree: &Value) -> Result<berth_auth::ThrottleConfig, ConfigError> {
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

/// Bounds on request bodies: how slow one may be, and how much of an unread one is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Least bytes per second over each `window` (0: no minimum).
    pub min_rate: u64,
    /// The period the rate is measured over (`http.timeouts.body`).
    pub window: Duration,
    /// Longest time for one body (`None`: no limit).
    pub total: Option<Duration>,
    /// Most bytes of an unread body read and discarded before an early answer (0: none).
    pub drain_bytes: u64,
    /// Longest time spent draining.
    pub drain_time: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            min_rate: 1024,
            window: Duration::from_secs(60),
            total: None,
            drain_bytes: 64 << 20,
            drain_time: Duration::from_secs(10),
        }
    }
}

/// A configuration that cannot be used; the message says which setting and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_FILES: &[&str] = &["/etc/distribution/config.yml", "/etc/docker/registry/config.yml"];

/// Load and validate. `explicit` is `--config` (or the positional argument); `env` is the
/// process environment. Returns the config and warnings to log once logging is up.
pub fn load(source: Source<'_>, env: &BTreeMap<String, String>) -> Result<(Config, Vec<String>), ConfigError> {
    load_searching(source, env, DEFAULT_FILES)
}

/// [`load`], searching `search` instead of [`DEFAULT_FILES`].
fn load_searching(
    source: Source<'_>,
    env: &BTreeMap<String, String>,
    search: &[&str],
) -> Result<(Config, Vec<String>), ConfigError> {
    let found = match source {
        Source::File(p) => Some((p.to_path_buf(), FileOrigin::Named)),
        Source::DefaultsOnly => None,
        Source::Search => match env.get("REGISTRY_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => Some((PathBuf::from(p), FileOrigin::Env)),
            None => search
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .map(|p| (p, FileOrigin::Searched)),
        },
    };
    let Some((path, origin)) = found else {
        return from_tree(Value::Object(Map::new()), None, env);
    };
    // Every line of an error names the file; a file the user may not know was read says how
    // to choose otherwise.
    let in_file = |e: ConfigError| {
        let mut lines: Vec<String> = e.0.lines().map(|l| format!("{}: {l}", path.display())).collect();
        if let Some(hint) = origin.hint(&path, search) {
            lines.push(hint);
        }
        ConfigError(lines.join("\n"))
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| in_file(ConfigError(format!("cannot read the configuration file: {e}"))))?;
    let tree = parse_yaml(&text).map_err(|e| in_file(ConfigError(e)))?;
    let (mut config, warnings) = from_tree(tree, Some(path.clone()), env).map_err(in_file)?;
    config.file_origin = Some(origin);
    Ok((config, warnings))
}

/// How the configuration file was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// Named on the command line (`--config` or the argument).
    Named,
    /// Named by `$REGISTRY_CONFIG`.
    Env,
    /// Found at one of [`DEFAULT_FILES`] (for example the file Debian's `docker-registry`
    /// package installs), with neither of the above given.
    Searched,
}

impl FileOrigin {
    /// How it was chosen, for the start-up log.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOrigin::Named => "named on the command line",
            FileOrigin::Env => "named by REGISTRY_CONFIG",
            FileOrigin::Searched => "found by the default search",
        }
    }

    /// What to do about an error in a file the user did not name on the command line.
    fn hint(self, path: &Path, search: &[&str]) -> Option<String> {
        match self {
            FileOrigin::Named => None,
            FileOrigin::Env => Some(format!(
                "{}: this file is named by REGISTRY_CONFIG; unset it, or pass --config FILE or --no-config-file, to use another file or the built-in defaults",
                path.display()
            )),
            FileOrigin::Searched => Some(format!(
                "{}: this file was found by the default search ({}); run with --no-config-file for the built-in defaults and REGISTRY_* variables only, or choose a file with --config FILE or REGISTRY_CONFIG",
                path.display(),
                search.join(", ")
            )),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// This file.
    File(&'a Path),
    /// `$REGISTRY_CONFIG`, then [`DEFAULT_FILES`], then built-in defaults.
    Search,
    /// Built-in defaults and environment variables only.
    DefaultsOnly,
}

/// Parse YAML text into a tree (empty text is an empty config).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err("the configuration must be a YAML mapping".into()),
    }
}

/// Is this a variable Kubernetes injects for a Service (docker link style)? Such variables are
/// named after the Service (`registry`, `registry-auth`, …) and must never stop the server.
fn is_kubernetes_service_var(name: &str, value: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let n = parts.len();
    let is_num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT, <SVC>_SERVICE_PORT_<PORTNAME>
    if let Some(i) = parts.iter().rposition(|p| *p == "SERVICE")
        && i > 0
        && i + 1 < n
        && (parts[i + 1] == "HOST" && i + 2 == n || parts[i + 1] == "PORT")
    {
        return true;
    }
    // <SVC>_PORT_<num>_<PROTO>[_ADDR|_PORT|_PROTO]
    if let Some(i) = parts.iter().rposition(|p| *p == "PORT")
        && i + 2 < n + 1
        && i + 1 < n
        && is_num(parts[i + 1])
        && parts.get(i + 2).is_some_and(|p| matches!(*p, "TCP" | "UDP" | "SCTP"))
    {
        return true;
    }
    // <SVC>_PORT=tcp://ip:port
    name.ends_with("_PORT") && ["tcp://", "udp://", "sctp://"].iter().any(|p| value.starts_with(p))
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut cur = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("just made an object");
        if i + 1 == parts.len() {
            obj.insert((*p).to_owned(), value);
            return;
        }
        cur = obj.entry((*p).to_owned()).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn get_path<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |v, p| v.get(p)).filter(|v| !v.is_null())
}

/// Dotted paths of every leaf (and of empty mappings) in the tree.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn env_names(path: &str) -> String {
    SETTINGS
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.env.join(" or "))
        .filter(|s| !s.is_empty())
        .map(|s| format!(" (env {s})"))
        .unwrap_or_default()
}

fn bad(path: &str, what: &str, got: &Value) -> ConfigError {
    ConfigError(format!("{path}{}: expected {what}, got {got}", env_names(path)))
}

fn get_bool(tree: &Value, path: &str, default: bool) -> Result<bool, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(bad(path, "true or false", &Value::String(s.clone()))),
        },
        Some(v) => Err(bad(path, "true or false", v)),
    }
}

fn get_str<'a>(tree: &'a Value, path: &str) -> Result<Option<&'a str>, ConfigError> {
    match get_path(tree, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(bad(path, "a string", v)),
    }
}

/// A file named by a setting; empty counts as unset.
fn get_file(tree: &Value, path: &str) -> Result<Option<PathBuf>, ConfigError> {
    Ok(get_str(tree, path)?.filter(|v| !v.trim().is_empty()).map(PathBuf::from))
}

fn get_usize(tree: &Value, path: &str, default: usize) -> Result<usize, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(path, "a positive whole number", &Value::Number(n.clone()))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| bad(path, "a positive whole number", &Value::String(s.clone()))),
        Some(v) => Err(bad(path, "a positive whole number", v)),
    }
}

/// Seconds as a number, or a duration string like `90s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn get_duration(tree: &Value, path: &str, default: Duration) -> Result<Duration, ConfigError> {
    match get_path(tree, path) {
        None => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| bad(path, "a duration such as 300s or 1h", &Value::Number(n.clone()))),
        Some(Value::String(s)) => {
            parse_duration(s).ok_or_else(|| bad(path, "a duration such as 300s or 1h", &Value::String(s.clone())))
        }
        Some(v) => Err(bad(path, "a duration such as 300s or 1h", v)),
    }
}

fn parse_host(host: &str) -> Option<IpAddr> {
    match host.trim_start_matches('[').trim_end_matches(']') {
        // `:5000` means every interface, IPv6 and IPv4 (a dual-stack socket), as in distribution.
        "" => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        h => h.parse().ok(),
    }
}

/// Validate a tree (file contents with nothing applied yet) against the environment.
pub fn from_tree(
    mut tree: Value,
    file: Option<PathBuf>,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let mut host_override = None;
    let mut port_override = None;
    let mut auth_type: Option<String> = None;
    for (name, value) in env.iter().filter(|(k, _)| k.starts_with("REGISTRY_")) {
        if name == "REGISTRY_CONFIG" {
            continue;
        }
        if name == "REGISTRY_PORT" && !is_kubernetes_service_var(name, value) {
            port_override = Some(value.clone());
            continue;
        }
        if name == "REGISTRY_HOST" {
            host_override = Some(value.clone());
            continue;
        }
        if is_kubernetes_service_var(name, value) {
            warnings.push(format!(
                "ignoring {name}: it looks like a variable Kubernetes injects for a Service, not a Berth setting (set enableServiceLinks: false in the pod spec to stop them)"
            ));
            continue;
        }
        if name == "REGISTRY_AUTH_TYPE" {
            auth_type = Some(value.trim().to_ascii_lowercase());
            continue;
        }
        if let Some(s) = SETTINGS.iter().find(|s| s.env.contains(&name.as_str())) {
            set_path(&mut tree, s.path, Value::String(value.clone()));
            continue;
        }
        if let Some(header) = name.strip_prefix("REGISTRY_HTTP_HEADERS_") {
            // The rest of the name is the header, as written (Access-Control-Allow-Origin).
            let value = parse_yaml_value(value);
            if let Some(obj) = tree.as_object_mut() {
                let http = obj.entry("http").or_insert_with(|| Value::Object(Map::new()));
                if !http.is_object() {
                    *http = Value::Object(Map::new());
                }
                if let Some(http) = http.as_object_mut() {
                    let headers = http.entry("headers").or_insert_with(|| Value::Object(Map::new()));
                    if !headers.is_object() {
                        *headers = Value::Object(Map::new());
                    }
                    if let Some(h) = headers.as_object_mut() {
                        h.insert(header.to_owned(), value);
                    }
                }
            }
            continue;
        }
        if name.starts_with("REGISTRY_HTTP_TLS_LETSENCRYPT_") {
            set_path(&mut tree, "http.tls.letsencrypt.env", Value::String(name.clone()));
            continue;
        }
        warnings.push(format!(
            "ignoring {name}: not a Berth setting (see docs/configuration.md)"
        ));
    }

    // Every independent problem is collected, so one run reports them all.
    let mut errors: Vec<String> = Vec::new();
    let mut take = |r: Result<(), ConfigError>| {
        if let Err(ConfigError(m)) = r {
            errors.extend(m.lines().map(str::to_owned));
        }
    };
    // Before auth_config, which drops the auth section when authentication is off.
    let mut auth_throttle = berth_auth::ThrottleConfig::default();
    take(throttle_settings(&tree).map(|t| auth_throttle = t));
    let mut auth = AuthConfig::None;
    take(auth_config(&mut tree, auth_type.as_deref()).map(|a| auth = a));
    take(unsupported(&tree));
    take(unknown_leaves(&tree, &mut warnings));
    let mut addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5000);
    take(listen_addr(&tree, host_override.as_deref(), port_override.as_deref()).map(|a| addr = a));
    let mut root = PathBuf::from("./data");
    take(
        get_str(&tree, "storage.filesystem.rootdirectory").and_then(|r| match r {
            Some(r) if r.trim().is_empty() => Err(ConfigError(
                "storage.filesystem.rootdirectory (env REGISTRY_STORAGE_PATH) is empty; name a directory".into(),
            )),
            Some(r) => {
                root = PathBuf::from(r);
                Ok(())
            }
            None => Ok(()),
        }),
    );
    let mut log_level = "info".to_owned();
    take(get_str(&tree, "log.level").and_then(|l| {
        let l = l.unwrap_or("info").to_ascii_lowercase();
        if ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
            log_level = l;
            Ok(())
        } else {
            Err(ConfigError(format!(
                "log.level (env REGISTRY_LOG_LEVEL): {l:?} is not one of error, warn, info, debug, trace"
            )))
        }
    }));
    let mut log_json = false;
    take(get_str(&tree, "log.formatter").and_then(|f| match f.unwrap_or("text") {
        "text" => Ok(()),
        "json" => {
            log_json = true;
            Ok(())
        }
        other => Err(ConfigError(format!(
            "log.formatter (env REGISTRY_LOG_FORMATTER): {other:?} is not text or json"
        ))),
    }));
    let (mut page_default, mut page_max) = (100, 1000);
    take(pagination(&tree).map(|(d, m)| (page_default, page_max) = (d, m)));
    let mut upload_timeout = Duration::from_secs(3600);
    take(get_duration(&tree, "storage.maintenance.uploadpurging.age", upload_timeout).map(|d| upload_timeout = d));
    let mut upload_cleanup_interval = Duration::from_secs(300);
    take(
        get_duration(&tree, "storage.maintenance.uploadpurging.interval", upload_cleanup_interval).and_then(|d| {
            if d.is_zero() {
                return Err(ConfigError(
                    "storage.maintenance.uploadpurging.interval (env REGISTRY_UPLOAD_CLEANUP_INTERVAL) must be greater than 0"
                        .into(),
                ));
            }
            upload_cleanup_interval = d;
            Ok(())
        }),
    );
    let mut access_rules = None;
    take(access_control(&tree).map(|r| access_rules = r));
    let mut headers = Vec::new();
    take(response_headers(&tree).map(|h| headers = h));
    let mut trusted_proxies = Vec::new();
    take(trusted_proxy_list(&tree).map(|t| trusted_proxies = t));
    let mut tls = None;
    take(tls_settings(&tree).map(|t| tls = t));
    let (mut gc_interval, mut gc) = (None, berth_engine::GcOptions::default());
    take(gc_settings(&tree).map(|g| (gc_interval, gc) = g));
    let (mut header_timeout, mut body_timeout, mut max_requests) =
        (Duration::from_secs(30), Duration::from_secs(60), 8192);
    take((|| {
        header_timeout = get_duration(&tree, "http.timeouts.header", header_timeout)?;
        body_timeout = get_duration(&tree, "http.timeouts.body", body_timeout)?;
        max_requests = get_usize(&tree, "http.limits.concurrentrequests", max_requests)?;
        if header_timeout.is_zero() || body_timeout.is_zero() {
            return Err(ConfigError(
                "http.timeouts.header and http.timeouts.body (env REGISTRY_HTTP_TIMEOUTS_HEADER, REGISTRY_HTTP_TIMEOUTS_BODY) must be greater than 0".into(),
            ));
        }
        Ok(())
    })());
    let mut upload_limits = berth_engine::UploadLimits::default();
    take((|| {
        upload_limits = berth_engine::UploadLimits {
            per_owner: get_usize(&tree, "http.limits.uploadsperclient", upload_limits.per_owner)?,
            per_repository: get_usize(&tree, "http.limits.uploadsperrepository", upload_limits.per_repository)?,
            total: get_usize(&tree, "http.limits.uploads", upload_limits.total)?,
        };
        Ok(())
    })());
    let mut body_limits = BodyLimits {
        window: body_timeout,
        ..BodyLimits::default()
    };
    take((|| {
        body_limits.min_rate = get_usize(&tree, "http.limits.bodyminrate", body_limits.min_rate as usize)? as u64;
        body_limits.total =
            Some(get_duration(&tree, "http.timeouts.bodytotal", Duration::ZERO)?).filter(|d| !d.is_zero());
        body_limits.drain_bytes = get_usize(&tree, "http.limits.drain", body_limits.drain_bytes as usize)? as u64;
        body_limits.drain_time = get_duration(&tree, "http.timeouts.drain", body_limits.drain_time)?;
        Ok(())
    })());
    let (mut metrics_path, mut debug_addr) = (Some("/metrics".to_owned()), None);
    take(metrics_settings(&tree).map(|(p, a)| (metrics_path, debug_addr) = (p, a)));
    let mut flags = (false, true, true, false, false);
    take((|| {
        flags = (
            get_bool(&tree, "storage.delete.enabled", false)?,
            !get_bool(&tree, "log.accesslog.disabled", false)?,
            get_bool(&tree, "storage.maintenance.uploadpurging.enabled", true)?,
            get_bool(&tree, "storage.maintenance.uploadpurging.dryrun", false)?,
            get_bool(&tree, "storage.maintenance.readonly.enabled", false)?,
        );
        Ok(())
    })());
    if !errors.is_empty() {
        return Err(ConfigError(errors.join("\n")));
    }
    let (delete_enabled, access_log, purging, dryrun, read_only) = flags;
    let config = Config {
        file,
        file_origin: None,
        auth,
        access_rules,
        addr,
        root,
        delete_enabled,
        log_level,
        log_json,
        access_log,
        upload_timeout,
        upload_cleanup_interval,
        upload_purging: purging && !dryrun && !read_only,
        gc_interval: gc_interval.filter(|_| !read_only),
        gc,
        read_only,
        header_timeout,
        body_timeout,
        max_requests,
        upload_limits,
        body_limits,
        tls,
        metrics_path,
        debug_addr,
        page_default,
        page_max,
        headers,
        trusted_proxies,
        auth_throttle,
    };
    Ok((config, warnings))
}

/// `storage.maintenance.gc.*`.
fn gc_settings(tree: &Value) -> Result<(Option<Duration>, berth_engine::GcOptions), ConfigError> {
    let interval = get_duration(tree, "storage.maintenance.gc.interval", Duration::from_secs(24 * 3600))?;
    let opts = berth_engine::GcOptions {
        grace: get_duration(tree, "storage.maintenance.gc.grace", Duration::from_secs(3600))?,
        untagged: get_bool(tree, "storage.maintenance.gc.untagged", false)?,
        dry_run: false,
    };
    if !get_bool(tree, "storage.maintenance.gc.enabled", false)? {
        return Ok((None, opts));
    }
    if interval.is_zero() {
        return Err(ConfigError(
            "storage.maintenance.gc.interval (env REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL) must be greater than 0"
                .into(),
        ));
    }
    Ok((Some(interval), opts))
}

/// `http.tls.*`: none of it, or a certificate with its key.
fn tls_settings(tree: &Value) -> Result<Option<crate::tls::TlsConfig>, ConfigError> {
    let certificate = get_file(tree, "http.tls.certificate")?;
    let key = get_file(tree, "http.tls.key")?;
    let clientcas: Vec<PathBuf> = get_list(tree, "http.tls.clientcas", "a file name", "file names")?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let minimum = get_str(tree, "http.tls.minimumtls")?
        .unwrap_or("tls1.2")
        .trim()
        .to_ascii_lowercase();
    let tls13_only = match minimum.as_str() {
        "tls1.2" | "" => false,
        "tls1.3" => true,
        "tls1.0" | "tls1.1" => {
            return Err(ConfigError(format!(
                "http.tls.minimumtls (env REGISTRY_HTTP_TLS_MINIMUMTLS): {minimum} is not offered (TLS 1.0 and 1.1 are insecure); use tls1.2 or tls1.3"
            )));
        }
        other => {
            return Err(ConfigError(format!(
                "http.tls.minimumtls (env REGISTRY_HTTP_TLS_MINIMUMTLS): {other:?} is not tls1.2 or tls1.3"
            )));
        }
    };
    match (certificate, key) {
        (None, None) if clientcas.is_empty() => Ok(None),
        (Some(certificate), Some(key)) => Ok(Some(crate::tls::TlsConfig {
            certificate,
            key,
            clientcas,
            tls13_only,
        })),
        (c, k) => {
            let missing: Vec<&str> = [
                c.is_none()
                    .then_some("http.tls.certificate (env REGISTRY_HTTP_TLS_CERTIFICATE)"),
                k.is_none().then_some("http.tls.key (env REGISTRY_HTTP_TLS_KEY)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            Err(ConfigError(format!(
                "{} is required for TLS: name the PEM certificate chain and its private key (the registry would otherwise serve plain HTTP)",
                missing.join(" and ")
            )))
        }
    }
}

/// `http.debug.prometheus.*` and `http.debug.addr`.
fn metrics_settings(tree: &Value) -> Result<(Option<String>, Option<SocketAddr>), ConfigError> {
    // The debug listener serves /healthz and /readyz too, so its address counts with or without
    // the metrics; `:5001` means every interface, as in http.addr.
    let addr = match get_str(tree, "http.debug.addr")?
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        None => None,
        Some(a) => {
            let parsed = a
                .rsplit_once(':')
                .and_then(|(host, port)| Some(SocketAddr::new(parse_host(host)?, port.parse().ok()?)));
            Some(parsed.ok_or_else(|| {
                ConfigError(format!(
                    "http.debug.addr (env REGISTRY_HTTP_DEBUG_ADDR): {a:?} is not host:port, e.g. 127.0.0.1:5001"
                ))
            })?)
        }
    };
    if !get_bool(tree, "http.debug.prometheus.enabled", true)? {
        return Ok((None, addr));
    }
    let path = get_str(tree, "http.debug.prometheus.path")?
        .unwrap_or("/metrics")
        .trim();
    if !path.starts_with('/') || path.starts_with("/v2") || path == "/" {
        return Err(ConfigError(format!(
            "http.debug.prometheus.path (env REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH): {path:?} must start with / and not be under /v2, e.g. /metrics"
        )));
    }
    Ok((Some(path.to_owned()), addr))
}

/// `http.trustedproxies`: addresses or networks.
fn trusted_proxy_list(tree: &Value) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let setting = "http.trustedproxies";
    get_list(tree, setting, "an address or a network", "addresses or networks")?
        .iter()
        .map(|i| {
            berth_auth::access::parse_network(i.trim()).ok_or_else(|| {
                ConfigError(format!(
                    "{setting}{}: {i:?} is not an address or a network such as 10.0.0.0/8",
                    env_names(setting)
                ))
            })
        })
        .collect()
}

/// A variable's value as YAML when it looks like a YAML list (`['GET', 'HEAD']`), else the text.
fn parse_yaml_value(text: &str) -> Value {
    let t = text.trim();
    if t.starts_with('[')
        && let Ok(v) = serde_saphyr::from_str::<Value>(t)
    {
        return v;
    }
    Value::String(text.to_owned())
}

/// `http.headers`: header name → value or list of values, each added to every response.
fn response_headers(tree: &Value) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let Some(map) = get_path(tree, "http.headers") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = map else {
        return Err(bad("http.headers", "a map of header name to a list of values", map));
    };
    let mut out = Vec::new();
    for (name, values) in map {
        let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError(format!(
                "http.headers.{name} (env REGISTRY_HTTP_HEADERS_{name}): not a valid header name"
            ))
        })?;
        let list: Vec<&Value> = match values {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in list {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(bad(
                        &format!("http.headers.{name}"),
                        "a string or a list of strings",
                        other,
                    ));
                }
            };
            let value = http::HeaderValue::from_str(&text)
                .map_err(|_| ConfigError(format!("http.headers.{name}: {text:?} is not a valid header value")))?;
            out.push((header.clone(), value));
        }
    }
    Ok(out)
}

/// Settings that would change behaviour if honoured and cannot be: refused.
fn unsupported(tree: &Value) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    if get_str(tree, "http.prefix")?.is_some_and(|p| !p.trim().is_empty() && p.trim() != "/") {
        errors.push("http.prefix: serving under a path prefix is not available in this version of Berth; serve the registry at the root of its host (clients would otherwise get wrong URLs)".to_owned());
    }
    for (section, why) in UNSUPPORTED_SECTIONS {
        if get_path(tree, section).is_some() {
            errors.push(format!("{section}: {why}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(errors.join("\n")))
    }
}

/// Warn about settings Berth does not read; refuse storage drivers it does not have.
fn unknown_leaves(tree: &Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let mut all = Vec::new();
    leaves(tree, "", &mut all);
    for leaf in all.iter().filter(|l| !l.is_empty()) {
        let known = SETTINGS.iter().any(|s| s.path == leaf) || leaf.starts_with("http.headers.");
        let ignored = IGNORED_SECTIONS
            .iter()
            .any(|s| leaf == s || leaf.starts_with(&format!("{s}.")));
        if ignored {
            warnings.push(format!("{leaf}: not used by Berth, ignored"));
        } else if !known {
            if leaf.starts_with("storage.")
                && !leaf.starts_with("storage.filesystem")
                && !leaf.starts_with("storage.delete")
                && !leaf.starts_with("storage.maintenance")
            {
                let driver = leaf.split('.').nth(1).unwrap_or("");
                return Err(ConfigError(format!(
                    "storage.{driver}: this storage driver is not available in this version of Berth; use storage.filesystem.rootdirectory"
                )));
            }
            warnings.push(format!("{leaf}: unknown setting, ignored (see docs/configuration.md)"));
        }
    }
    Ok(())
}

fn listen_addr(
    tree: &Value,
    host_override: Option<&str>,
    port_override: Option<&str>,
) -> Result<SocketAddr, ConfigError> {
    let addr_text = get_str(tree, "http.addr")?.unwrap_or("0.0.0.0:5000");
    let (host, port) = addr_text.rsplit_once(':').ok_or_else(|| {
        ConfigError(format!(
            "http.addr (env REGISTRY_HTTP_ADDR): {addr_text:?} is not host:port, e.g. 0.0.0.0:5000 or :5000"
        ))
    })?;
    let host = host_override.unwrap_or(host);
    let ip = parse_host(host).ok_or_else(|| {
        ConfigError(format!("listen host {host:?} (http.addr / REGISTRY_HOST) is not an IP address; use 0.0.0.0, 127.0.0.1, :: or localhost"))
    })?;
    let port_text = port_override.unwrap_or(port);
    let port: u16 = port_text.trim().parse().map_err(|_| {
        ConfigError(format!(
            "listen port {port_text:?} (http.addr / REGISTRY_PORT) is not a port number between 0 and 65535"
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

fn pagination(tree: &Value) -> Result<(usize, usize), ConfigError> {
    let page_default = get_usize(tree, "pagination.defaultlimit", 100)?;
    let page_max = get_usize(tree, "pagination.maxlimit", 1000)?;
    if page_max == 0 || page_default == 0 {
        return Err(ConfigError("pagination.defaultlimit and pagination.maxlimit (env REGISTRY_PAGINATION_DEFAULT_LIMIT, REGISTRY_PAGINATION_MAX_LIMIT) must be at least 1".into()));
    }
    if page_default > page_max {
        return Err(ConfigError(format!(
            "pagination.defaultlimit ({page_default}) is larger than pagination.maxlimit ({page_max}); raise REGISTRY_PAGINATION_MAX_LIMIT or lower REGISTRY_PAGINATION_DEFAULT_LIMIT"
        )));
    }
    Ok((page_default, page_max))
}

fn access_control(tree: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let rules_path = get_str(tree, "accesscontrol.config")?
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    match (get_bool(tree, "accesscontrol.enabled", rules_path.is_some())?, rules_path) {
        (false, _) => Ok(None),
        (true, Some(p)) => Ok(Some(p)),
        (true, None) => Err(ConfigError(
            "accesscontrol.config (env REGISTRY_ACCESS_CONTROL_CONFIG): access control is enabled but no rules file is named".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_str(yaml: &str, pairs: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        from_tree(parse_yaml(yaml).unwrap(), None, &env(pairs))
    }

    #[test]
    fn a_file_found_by_the_search_is_named_in_errors_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(&file, "version: 0.1\nhttp: {addr: 'not an address'}\n").unwrap();
        let missing = dir.path().join("none.yml");
        let search = [missing.to_str().unwrap(), file.to_str().unwrap()];
        let err = load_searching(Source::Search, &env(&[]), &search).unwrap_err().0;
        let shown = file.display().to_string();
        assert!(err.lines().all(|l| l.starts_with(&shown)), "{err}");
        assert!(err.contains("http.addr"), "{err}");
        assert!(err.contains("found by the default search"), "{err}");
        assert!(
            err.contains("--no-config-file") && err.contains("REGISTRY_CONFIG"),
            "{err}"
        );
        // Named on the command line: the file and setting, without the advice.
        let err = load_searching(Source::File(&file), &env(&[]), &search).unwrap_err().0;
        assert!(err.starts_with(&shown) && err.contains("http.addr"), "{err}");
        assert!(!err.contains("--no-config-file"), "{err}");
        // Named by REGISTRY_CONFIG: says so.
        let named = env(&[("REGISTRY_CONFIG", file.to_str().unwrap())]);
        let err = load_searching(Source::Search, &named, &[]).unwrap_err().0;
        assert!(err.contains("named by REGISTRY_CONFIG"), "{err}");
        // A good file found by the search is recorded as such (the start-up log names it).
        std::fs::write(&file, "version: 0.1\nhttp: {addr: '127.0.0.1:5009'}\n").unwrap();
        let (c, _) = load_searching(Source::Search, &env(&[]), &search).unwrap();
        assert_eq!(c.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.file_origin, Some(FileOrigin::Searched));
        let (c, _) = load_searching(Source::DefaultsOnly, &env(&[]), &search).unwrap();
        assert_eq!((c.file, c.file_origin), (None, None));
    }

    #[test]
    fn defaults() {
        let (c, w) = load_str("", &[]).unwrap();
        assert_eq!(c.addr, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("./data"));
        assert!(!c.delete_enabled);
        assert_eq!(c.log_level, "info");
        assert_eq!((c.page_default, c.page_max), (100, 1000));
        assert_eq!(c.upload_timeout, Duration::from_secs(3600));
        assert_eq!(c.upload_cleanup_interval, Duration::from_secs(300));
        assert!(w.is_empty());
    }

    #[test]
    fn distribution_file_and_env_overrides() {
        let yaml = "version: 0.1\nlog: {level: debug}\nstorage:\n  filesystem: {rootdirectory: /var/lib/registry}\n  delete: {enabled: true}\n  cache: {blobdescriptor: inmemory}\nhttp: {addr: ':5001', secret: s}\n";
        let (c, w) = load_str(yaml, &[]).unwrap();
        assert_eq!(c.addr, "[::]:5001".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("/var/lib/registry"));
        assert!(c.delete_enabled);
        assert_eq!(c.log_level, "debug");
        assert!(w.iter().any(|w| w.contains("storage.cache")));
        let (c, _) = load_str(
            yaml,
            &[
                ("REGISTRY_STORAGE_PATH", "/x"),
                ("REGISTRY_PORT", "6000"),
                ("REGISTRY_HOST", "127.0.0.1"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_UPLOAD_TIMEOUT", "60"),
                ("REGISTRY_PAGINATION_DEFAULT_LIMIT", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.addr, "127.0.0.1:6000".parse().unwrap());
        assert!(!c.delete_enabled);
        assert_eq!(c.upload_timeout, Duration::from_secs(60));
        assert_eq!(c.page_default, 5);
    }

    #[test]
    fn kubernetes_service_variables_are_ignored() {
        let vars = [
            ("REGISTRY_PORT", "tcp://10.0.0.7:5000"),
            ("REGISTRY_PORT_5000_TCP", "tcp://10.0.0.7:5000"),
            ("REGISTRY_PORT_5000_TCP_ADDR", "10.0.0.7"),
            ("REGISTRY_PORT_5000_TCP_PORT", "5000"),
            ("REGISTRY_PORT_5000_TCP_PROTO", "tcp"),
            ("REGISTRY_SERVICE_HOST", "10.0.0.7"),
            ("REGISTRY_SERVICE_PORT", "5000"),
            ("REGISTRY_SERVICE_PORT_HTTP", "5000"),
            ("REGISTRY_AUTH_PORT", "tcp://10.0.0.8:80"),
            ("REGISTRY_AUTH_PORT_80_TCP_ADDR", "10.0.0.8"),
            ("REGISTRY_AUTH_SERVICE_HOST", "10.0.0.8"),
            ("REGISTRY_AUTH_SERVICE_PORT", "80"),
        ];
        let (c, w) = load_str("", &vars).unwrap();
        assert_eq!(c.addr.port(), 5000);
        assert_eq!(w.len(), vars.len(), "{w:?}");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = load_str("", &[("REGISTRY_HTTP_ADDR", "nonsense")]).unwrap_err().0;
        assert!(e.contains("REGISTRY_HTTP_ADDR"), "{e}");
        let e = load_str("", &[("REGISTRY_STORAGE_DELETE_ENABLED", "maybe")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("storage.delete.enabled") && e.contains("REGISTRY_STORAGE_DELETE_ENABLED"),
            "{e}"
        );
        let e = load_str("", &[("REGISTRY_PAGINATION_DEFAULT_LIMIT", "2000")])
            .unwrap_err()
            .0;
        assert!(e.contains("pagination.maxlimit"), "{e}");
        let e = load_str("storage: {s3: {bucket: b}}", &[]).unwrap_err().0;
        assert!(e.contains("storage.s3"), "{e}");
        let e = load_str("", &[("REGISTRY_UPLOAD_TIMEOUT", "soon")]).unwrap_err().0;
        assert!(e.contains("REGISTRY_UPLOAD_TIMEOUT"), "{e}");
    }

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
    fn every_setting_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        for s in SETTINGS {
            let names = std::iter::once(s.path).chain(s.env.iter().copied());
            for name in names.filter(|n| *n != "-") {
                assert!(
                    doc.contains(&format!("`{name}`")),
                    "docs/configuration.md does not document {name}"
                );
            }
        }
    }

    #[test]
    fn gc_settings() {
        let (c, _) = load_str("", &[]).unwrap();
        assert!(c.gc_interval.is_none());
        assert_eq!((c.gc.grace.as_secs(), c.gc.untagged), (3600, false));
        // The grace period set for `berth gc` counts with online collection off.
        let (c, _) = load_str("storage: {maintenance: {gc: {grace: 5m}}}", &[]).unwrap();
        assert_eq!((c.gc_interval, c.gc.grace.as_secs()), (None, 300));
        let (c, w) = load_str(
            "storage: {maintenance: {gc: {enabled: true, interval: 10m, grace: 2h, untagged: true}}}",
            &[],
        )
        .unwrap();
        let (interval, o) = (c.gc_interval.unwrap(), c.gc);
        assert_eq!((interval.as_secs(), o.grace.as_secs(), o.untagged), (600, 7200, true));
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true")]).unwrap();
        let (interval, o) = (c.gc_interval.unwrap(), c.gc);
        assert_eq!(
            (interval.as_secs(), o.grace.as_secs(), o.untagged),
            (86400, 3600, false)
        );
        let e = load_str(
            "",
            &[
                ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "0s"),
            ],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL"), "{e}");
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true"),
            ],
        )
        .unwrap();
        assert!(c.gc_interval.is_none(), "read-only mode collects nothing");
    }

    #[test]
    fn metrics_settings() {
        let (c, w) = load_str("", &[]).unwrap();
        assert_eq!((c.metrics_path.as_deref(), c.debug_addr), (Some("/metrics"), None));
        assert!(w.is_empty());
        let (c, w) = load_str(
            "http: {debug: {addr: 'localhost:5001', prometheus: {enabled: true, path: /m}}}",
            &[],
        )
        .unwrap();
        assert_eq!(c.metrics_path.as_deref(), Some("/m"));
        assert_eq!(c.debug_addr, Some("127.0.0.1:5001".parse().unwrap()));
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "false")]).unwrap();
        assert_eq!(c.metrics_path, None);
        // Without metrics the debug listener still serves the probes.
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "false"),
                ("REGISTRY_HTTP_DEBUG_ADDR", ":5001"),
            ],
        )
        .unwrap();
        assert_eq!((c.metrics_path, c.debug_addr.map(|a| a.port())), (None, Some(5001)));
        assert!(load_str("", &[("REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH", "/v2/metrics")]).is_err());
        assert!(load_str("", &[("REGISTRY_HTTP_DEBUG_ADDR", "nowhere")]).is_err());
    }

    #[test]
    fn trusted_proxies() {
        let (c, _) = load_str("http: {trustedproxies: [10.0.0.0/8, '::1']}", &[]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[1].contains(&"::1".parse::<IpAddr>().unwrap()));
        let (c, _) = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "172.16.0.0/12, 127.0.0.1")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let (c, _) = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "['192.168.0.0/16']")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 1);
        let e = load_str("", &[("REGISTRY_HTTP_TRUSTEDPROXIES", "10.0.0.0/99")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("REGISTRY_HTTP_TRUSTEDPROXIES") && e.contains("10.0.0.0/99"),
            "{e}"
        );
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

    #[test]
    fn tls_settings() {
        let (c, w) = load_str(
            "http: {tls: {certificate: /c.pem, key: /k.pem, clientcas: [/ca1.pem, /ca2.pem], minimumtls: tls1.3}}",
            &[],
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.certificate, PathBuf::from("/c.pem"));
        assert_eq!(t.clientcas.len(), 2);
        assert!(t.tls13_only);
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
                ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
                ("REGISTRY_HTTP_TLS_CLIENTCAS", "/a.pem,/b.pem"),
            ],
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().clientcas.len(), 2);
        assert!(load_str("", &[]).unwrap().0.tls.is_none());
        // Half a TLS configuration never falls back to plain HTTP.
        let e = load_str("http: {tls: {certificate: /c.pem}}", &[]).unwrap_err().0;
        assert!(
            e.contains("http.tls.key (env REGISTRY_HTTP_TLS_KEY) is required"),
            "{e}"
        );
        let e = load_str("", &[("REGISTRY_HTTP_TLS_CLIENTCAS", "/ca.pem")])
            .unwrap_err()
            .0;
        assert!(e.contains("http.tls.certificate") && e.contains("http.tls.key"), "{e}");
        assert!(load_str("http: {tls: {certificate: c, key: k, minimumtls: tls1.0}}", &[]).is_err());
        let e = load_str("", &[("REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL", "a@b")])
            .unwrap_err()
            .0;
        assert!(e.starts_with("http.tls.letsencrypt"), "{e}");
    }

    #[test]
    fn behaviour_changing_settings_are_not_ignored() {
        assert!(
            load_str("auth: {silly: {realm: r, service: s}}", &[])
                .unwrap_err()
                .0
                .starts_with("auth.silly")
        );
        assert!(
            load_str("auth: {ldap: {}}", &[])
                .unwrap_err()
                .0
                .starts_with("auth.ldap")
        );
        assert!(
            load_str("proxy: {remoteurl: https://registry-1.docker.io}", &[])
                .unwrap_err()
                .0
                .starts_with("proxy")
        );
        let (c, w) = load_str("storage: {maintenance: {readonly: {enabled: true}}}", &[]).unwrap();
        assert!(c.read_only && !c.upload_purging, "read-only mode removes nothing");
        assert!(w.is_empty(), "{w:?}");
        let (c, _) = load_str("", &[("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true")]).unwrap();
        assert!(c.read_only);
        assert!(!load_str("", &[]).unwrap().0.read_only);
        assert!(load_str("http: {prefix: /registry}", &[]).is_err());
        let (c, _) = load_str(
            "storage: {maintenance: {uploadpurging: {enabled: true, dryrun: true}}}",
            &[],
        )
        .unwrap();
        assert!(!c.upload_purging);
    }

    #[test]
    fn access_control() {
        let (c, _) = load_str("", &[("REGISTRY_ACCESS_CONTROL_CONFIG", "/r.json")]).unwrap();
        assert_eq!(c.access_rules, Some(PathBuf::from("/r.json")));
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_ACCESS_CONTROL_CONFIG", "/r.json"),
                ("REGISTRY_ACCESS_CONTROL_ENABLED", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.access_rules, None);
        let e = load_str("", &[("REGISTRY_ACCESS_CONTROL_ENABLED", "true")])
            .unwrap_err()
            .0;
        assert!(e.contains("REGISTRY_ACCESS_CONTROL_CONFIG"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = load_str(
            "log: {level: loud}\nhttp: {addr: nonsense}\npagination: {defaultlimit: 0}\nauth: {token: {issuer: i}}",
            &[],
        )
        .unwrap_err()
        .0;
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "log.level",
            "http.addr",
            "pagination.defaultlimit",
            "auth.token.realm",
            "auth.token.service",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "{want} missing in {e}");
        }
    }

    #[test]
    fn response_headers_from_file_and_env() {
        let yaml = "http: {headers: {X-Content-Type-Options: [nosniff]}}";
        let (c, w) = load_str(
            yaml,
            &[
                ("REGISTRY_HTTP_HEADERS_Access-Control-Allow-Origin", "['*']"),
                (
                    "REGISTRY_HTTP_HEADERS_Access-Control-Allow-Methods",
                    "['GET', 'HEAD', 'OPTIONS']",
                ),
            ],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let h: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert!(h.contains(&("x-content-type-options".into(), "nosniff".into())));
        assert!(h.contains(&("access-control-allow-origin".into(), "*".into())));
        assert!(h.contains(&("access-control-allow-methods".into(), "OPTIONS".into())));
        assert_eq!(h.iter().filter(|(k, _)| k == "access-control-allow-methods").count(), 3);
        assert!(load_str("http: {headers: {\"bad name\": [x]}}", &[]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
