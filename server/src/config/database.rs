//! The `database` section: the shared PostgreSQL metadata store, configured as GitLab's
//! container registry configures its database.

use std::time::Duration;

use serde_json::Value;

use berth_engine::postgres::{PgSettings, PoolSettings};

use super::ConfigError;
use super::tree::{bad, env_names, get_bool, get_duration, get_str, get_usize};

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
        sslmode: text("database.sslmode", &d.sslmode)?.to_ascii_lowercase(),
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
    if s.sslmode != "disable" {
        return Err(ConfigError(format!(
            "database.sslmode (env REGISTRY_DATABASE_SSLMODE): {:?} is not available in this version of Berth (TLS to PostgreSQL is not built in); use disable, with PostgreSQL on a private network or a Unix socket",
            s.sslmode
        )));
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
            ("database: {enabled: true, sslmode: require}", "database.sslmode"),
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
}
