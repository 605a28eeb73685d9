//! The `database` section: the shared PostgreSQL metadata store, configured as GitLab's
//! container registry configures its database.

use std::time::Duration;

use serde_json::Value;

use berth_engine::postgres::{PgSettings, PoolSettings, SslMode};

use super::ConfigError;
use super::tree::{bad, env_names, get_bool, get_duration, get_file, get_str, get_usize};

/// `database.*`: `None` unless `database.enabled`.
pub(super) fn database_settings(tree: &Value) -> Result<Option<PgSettings>, ConfigError> {
    if !get_bool(tree, "database.enabled", false)? {
        return Ok(None);
    }
    let d = PgSettings::default();
    let text = |path: &str, default: &str| -> Result<String, ConfigError> {
        Ok(get_str(tree, path)?.map_or_else(|| default.to_owned(), str::to_owned))
    };
    let port = get_usize(tree, "database.port", usize::from(d.port))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("database.port", "a port from 1 to 65535", &Value::from(port)))?;
    let max_lifetime = get_duration(tree, "database.pool.maxlifetime", Duration::ZERO)?;
    let s = PgSettings {
        host: text("database.host", &d.host)?,
        port,
        user: text("database.user", &d.user)?,
        password: text("database.password", &d.password)?,
        dbname: text("database.dbname", &d.dbname)?,
        sslmode: text("database.sslmode", &d.sslmode)?.trim().to_ascii_lowercase(),
        sslrootcert: get_file(tree, "database.sslrootcert")?,
        sslcert: get_file(tree, "database.sslcert")?,
        sslkey: get_file(tree, "database.sslkey")?,
        connect_timeout: get_duration(tree, "database.connecttimeout", d.connect_timeout)?,
        pool: PoolSettings {
            max_open: get_usize(tree, "database.pool.maxopen", d.pool.max_open)?,
            max_idle: get_usize(tree, "database.pool.maxidle", d.pool.max_idle)?,
            max_lifetime: (!max_lifetime.is_zero()).then_some(max_lifetime),
        },
    };
    for (path, v) in [
        ("database.host", &s.host),
        ("database.user", &s.user),
        ("database.dbname", &s.dbname),
    ] {
        if v.trim().is_empty() {
            return Err(ConfigError(format!("{path}{} is empty", env_names(path))));
        }
    }
    if s.pool.max_open == 0 {
        return Err(ConfigError(
            "database.pool.maxopen (env REGISTRY_DATABASE_POOL_MAXOPEN) must be at least 1".into(),
        ));
    }
    if s.connect_timeout.is_zero() {
        return Err(ConfigError(
            "database.connecttimeout (env REGISTRY_DATABASE_CONNECTTIMEOUT) must be greater than 0".into(),
        ));
    }
    if SslMode::from_name(&s.sslmode).is_none() {
        return Err(ConfigError(format!(
            "database.sslmode{}: {:?} is not a PostgreSQL sslmode; use disable, allow, prefer, require, verify-ca or verify-full",
            env_names("database.sslmode"),
            s.sslmode
        )));
    }
    match (&s.sslcert, &s.sslkey) {
        (Some(_), None) => {
            return Err(ConfigError(format!(
                "database.sslkey{} must be set with database.sslcert (the client certificate's private key)",
                env_names("database.sslkey")
            )));
        }
        (None, Some(_)) => {
            return Err(ConfigError(format!(
                "database.sslcert{} must be set with database.sslkey (the client certificate)",
                env_names("database.sslcert")
            )));
        }
        _ => {}
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_str;

    #[test]
    fn database_settings() {
        let (c, _) = load_str("", &[]).unwrap();
        assert!(c.database.is_none(), "SQLite unless enabled");
        let (c, _) = load_str("database: {host: db.internal, password: x}", &[]).unwrap();
        assert!(c.database.is_none(), "enabled: false by default, as GitLab's");
        let (c, w) = load_str(
            "database: {enabled: true, host: db.internal, port: 6432, user: reg, password: s3cret, dbname: berth, sslmode: disable, pool: {maxopen: 5, maxidle: 2, maxlifetime: 30m}}",
            &[],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let d = c.database.unwrap();
        assert_eq!(
            (
                d.host.as_str(),
                d.port,
                d.user.as_str(),
                d.password.as_str(),
                d.dbname.as_str()
            ),
            ("db.internal", 6432, "reg", "s3cret", "berth")
        );
        assert_eq!((d.pool.max_open, d.pool.max_idle), (5, 2));
        assert_eq!(d.pool.max_lifetime.unwrap().as_secs(), 1800);
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_DATABASE_ENABLED", "true"),
                ("REGISTRY_DATABASE_HOST", "/run/postgresql"),
                ("REGISTRY_DATABASE_PASSWORD", "from-env"),
                ("REGISTRY_DATABASE_PORT", "5433"),
            ],
        )
        .unwrap();
        let d = c.database.unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.password.as_str()),
            ("/run/postgresql", 5433, "from-env")
        );
        assert_eq!(
            (d.user.as_str(), d.dbname.as_str(), d.pool.max_lifetime),
            ("registry", "registry", None)
        );
        for (yaml, want) in [
            ("database: {enabled: true, port: 70000}", "database.port"),
            ("database: {enabled: true, port: 0}", "database.port"),
            ("database: {enabled: true, sslmode: bogus}", "database.sslmode"),
            ("database: {enabled: true, sslmode: verify_full}", "database.sslmode"),
            (
                "database: {enabled: true, sslmode: require, sslcert: /tls/client.crt}",
                "database.sslkey (env REGISTRY_DATABASE_SSLKEY) must be set",
            ),
            (
                "database: {enabled: true, sslmode: require, sslkey: /tls/client.key}",
                "database.sslcert (env REGISTRY_DATABASE_SSLCERT) must be set",
            ),
            ("database: {enabled: true, sslrootcert: 5}", "database.sslrootcert"),
            ("database: {enabled: true, host: ''}", "database.host"),
            ("database: {enabled: true, pool: {maxopen: 0}}", "database.pool.maxopen"),
            (
                "database: {enabled: true, connecttimeout: 0s}",
                "database.connecttimeout",
            ),
            ("database: {enabled: maybe}", "database.enabled"),
        ] {
            let e = load_str(yaml, &[]).unwrap_err().0;
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn tls_settings() {
        let (c, _) = load_str("database: {enabled: true}", &[]).unwrap();
        let d = c.database.unwrap();
        assert_eq!(
            (d.sslmode.as_str(), &d.sslrootcert, &d.sslcert, &d.sslkey),
            ("disable", &None, &None, &None)
        );
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let (c, w) = load_str(&format!("database: {{enabled: true, sslmode: {mode}}}"), &[]).unwrap();
            assert!(w.is_empty(), "{mode}: {w:?}");
            assert_eq!(c.database.unwrap().sslmode, mode);
        }
        let (c, w) = load_str(
            "database: {enabled: true, host: db.internal, sslmode: Verify-Full, sslrootcert: /tls/ca.crt, sslcert: /tls/client.crt, sslkey: /tls/client.key}",
            &[],
        )
        .unwrap();
        assert!(w.is_empty(), "the TLS settings are known: {w:?}");
        let d = c.database.unwrap();
        assert_eq!(d.sslmode, "verify-full", "any case, as GitLab's");
        assert_eq!(d.sslrootcert.as_deref(), Some(std::path::Path::new("/tls/ca.crt")));
        assert_eq!(d.sslcert.as_deref(), Some(std::path::Path::new("/tls/client.crt")));
        assert_eq!(d.sslkey.as_deref(), Some(std::path::Path::new("/tls/client.key")));
        let (c, _) = load_str(
            "",
            &[
                ("REGISTRY_DATABASE_ENABLED", "true"),
                ("REGISTRY_DATABASE_SSLMODE", "verify-ca"),
                ("REGISTRY_DATABASE_SSLROOTCERT", "/run/secrets/pg-ca.crt"),
                ("REGISTRY_DATABASE_SSLCERT", "/run/secrets/pg.crt"),
                ("REGISTRY_DATABASE_SSLKEY", "/run/secrets/pg.key"),
            ],
        )
        .unwrap();
        let d = c.database.unwrap();
        assert_eq!(d.sslmode, "verify-ca");
        assert_eq!(
            (d.sslrootcert.unwrap(), d.sslcert.unwrap(), d.sslkey.unwrap()),
            (
                "/run/secrets/pg-ca.crt".into(),
                "/run/secrets/pg.crt".into(),
                "/run/secrets/pg.key".into()
            )
        );
        // An empty variable counts as unset.
        let (c, _) = load_str(
            "database: {enabled: true, sslrootcert: /tls/ca.crt}",
            &[("REGISTRY_DATABASE_SSLROOTCERT", "")],
        )
        .unwrap();
        assert_eq!(c.database.unwrap().sslrootcert, None);
    }
}
