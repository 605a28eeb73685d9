//! Configuration: a distribution-compatible `config.yml`, `REGISTRY_*` environment overrides and
//! the short variable names users know, turned into a validated [`Config`] in one function.
//! Every error names the setting (and its variable) and says what to do.
//!
//! [`from_tree`] is that function, here with [`Config`]. Beside it: `settings` (the table of every
//! setting), `load` (which file is read, its YAML), `env` (the variables onto the tree), `tree`
//! (typed reads out of the raw tree), and a file a section: `auth`, `serving` (`http.*` and
//! `pagination.*`), `storage`, `database`, `s3` (`storage.s3.*`), `access`, and `unsupported`
//! (what Berth ignores or refuses).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

mod access;
mod auth;
mod cache;
mod database;
mod env;
mod load;
mod mirror;
mod s3;
mod serving;
mod settings;
mod storage;
mod tree;
mod unsupported;

pub use auth::{AuthConfig, TokenConfig, TokenServerConfig, UserSources};
pub use load::{DEFAULT_FILES, FileOrigin, Source, load, parse_yaml};
pub use mirror::MirrorConfig;
pub use serving::BodyLimits;
pub use settings::{SETTINGS, Setting};
pub use tree::parse_duration;

use access::access_control;
use auth::{auth_config, throttle_settings};
use database::database_settings;
use env::{EnvOverrides, env_overrides};
use s3::s3_settings;
use serving::{listen_addr, metrics_settings, pagination, response_headers, tls_settings, trusted_proxy_list};
use storage::gc_settings;
use tree::{get_bool, get_duration, get_str, get_usize};
use unsupported::{unknown_leaves, unsupported};

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
    /// The shared database for the metadata (`database.enabled`); `None`: SQLite under the root.
    pub database: Option<berth_engine::postgres::PgSettings>,
    /// The blobs in S3-compatible object storage (`storage.s3`, or `REGISTRY_STORAGE=s3`);
    /// `None`: the filesystem driver, under `root`. When set, `database` is set too.
    pub s3: Option<berth_engine::s3::S3Settings>,
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
    /// Bytes the read cache may hold (`cache.memory`).
    pub cache_budget: u64,
    /// Bytes of small blobs kept in memory and the largest kept (`cache.blobmemory`,
    /// `cache.blobmaxsize`).
    pub blob_cache: (u64, u64),
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
    /// Upstream registries this one mirrors (`proxy`, `mirrors`); empty: none.
    pub mirrors: Vec<MirrorConfig>,
    /// How the other processes reach this one directly (`http.peerurl`, or the listen address
    /// when it names one interface).
    pub peer_url: Option<String>,
}

/// A configuration that cannot be used; the message says which setting and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Validate a tree (file contents with nothing applied yet) against the environment.
pub fn from_tree(
    mut tree: Value,
    file: Option<PathBuf>,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let EnvOverrides {
        host: host_override,
        port: port_override,
        auth_type,
    } = env_overrides(&mut tree, env, &mut warnings);

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
    let mut peer_url = None;
    take(serving::peer_url(&tree, addr, tls.is_some()).map(|p| peer_url = p));
    let mut database = None;
    take(database_settings(&tree).map(|d| database = d));
    let mut mirrors = Vec::new();
    take(mirror::mirror_settings(&tree, env).map(|m| mirrors = m));
    let mut s3 = None;
    take(s3_settings(&tree, env, &mut warnings).map(|s| s3 = s));
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
    let mut cache_budget = berth_engine::hot::DEFAULT_BUDGET;
    take(cache::cache_budget(&tree).map(|b| cache_budget = b));
    let mut blob_cache = (
        berth_engine::bodies::DEFAULT_BUDGET,
        berth_engine::bodies::DEFAULT_MAX_BLOB,
    );
    take(cache::blob_cache(&tree).map(|b| blob_cache = b));
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
        cache_budget,
        blob_cache,
        database,
        s3,
        body_limits,
        tls,
        metrics_path,
        debug_addr,
        page_default,
        page_max,
        headers,
        trusted_proxies,
        auth_throttle,
        mirrors,
        peer_url,
    };
    Ok((config, warnings))
}

/// Helpers for the tests of every file here.
#[cfg(test)]
mod testing {
    use super::*;

    pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub(super) fn load_str(yaml: &str, pairs: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        from_tree(parse_yaml(yaml).unwrap(), None, &env(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::load_str;
    use super::*;

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
        let e = load_str("storage: {gcs: {bucket: b}}", &[]).unwrap_err().0;
        assert!(
            e.starts_with("storage.gcs: this storage driver is not available"),
            "{e}"
        );
        let e = load_str("storage: {s3: {bucket: b}}", &[]).unwrap_err().0;
        assert!(e.contains("storage.s3 needs database.enabled"), "{e}");
        let e = load_str("", &[("REGISTRY_UPLOAD_TIMEOUT", "soon")]).unwrap_err().0;
        assert!(e.contains("REGISTRY_UPLOAD_TIMEOUT"), "{e}");
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
}
