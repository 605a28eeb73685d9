//! The connection settings of the shared database, shaped like the `database` section of
//! GitLab's container registry (`host`, `port`, `user`, `password`, `dbname`, `sslmode`,
//! `connecttimeout`, `pool.{maxopen,maxidle,maxlifetime}`), and what a refused connection says:
//! every error names the setting to fix.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::{Error, MetaError};

/// How the database is reached. Its `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// Host name, IP address, or the directory of a Unix socket (starting with `/`).
    pub host: String,
    /// TCP port (also names the Unix socket file).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Database name.
    pub dbname: String,
    /// TLS mode; only `disable` is supported so far.
    pub sslmode: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// The connection pool.
    pub pool: PoolSettings,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &if self.password.is_empty() { "" } else { "(set)" })
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool", &self.pool)
            .finish()
    }
}

/// The connection pool (`database.pool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections open at once (`maxopen`), besides the one that listens for changes.
    pub max_open: usize,
    /// Most idle connections kept (`maxidle`); more are closed.
    pub max_idle: usize,
    /// Connections older than this are closed instead of reused (`maxlifetime`); `None`: never.
    pub max_lifetime: Option<Duration>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            host: "localhost".into(),
            port: 5432,
            user: "registry".into(),
            password: String::new(),
            dbname: "registry".into(),
            sslmode: "disable".into(),
            connect_timeout: Duration::from_secs(5),
            pool: PoolSettings::default(),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_open: 20,
            max_idle: 10,
            max_lifetime: None,
        }
    }
}

fn settings_error(msg: String) -> Error {
    Error::Meta(MetaError::Settings(msg))
}

impl PgSettings {
    /// `host:port/dbname`, to name the database in messages and files (no credentials).
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// Check the settings and build the driver's configuration from them.
    pub(crate) fn config(&self) -> Result<tokio_postgres::Config, Error> {
        match self.sslmode.as_str() {
            "disable" => {}
            "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {
                return Err(settings_error(format!(
                    "database.sslmode: {:?} is not supported yet (TLS to PostgreSQL is not built in); \
                     set database.sslmode: disable",
                    self.sslmode
                )));
            }
            other => {
                return Err(settings_error(format!(
                    "database.sslmode: {other:?} is not a PostgreSQL sslmode \
                     (disable, allow, prefer, require, verify-ca, verify-full); only disable is supported so far"
                )));
            }
        }
        if self.host.is_empty() {
            return Err(settings_error("database.host is empty".into()));
        }
        if self.user.is_empty() {
            return Err(settings_error("database.user is empty".into()));
        }
        if self.dbname.is_empty() {
            return Err(settings_error("database.dbname is empty".into()));
        }
        if self.pool.max_open == 0 {
            return Err(settings_error("database.pool.maxopen must be at least 1".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(settings_error("database.connecttimeout must be more than 0".into()));
        }
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .application_name("berth")
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok(c)
    }

    /// What a failed first connection means, naming the setting to fix.
    pub(crate) fn connect_error(&self, e: &tokio_postgres::Error) -> Error {
        let at = format!(
            "database.host={:?} database.port={} database.dbname={:?} database.user={:?}",
            self.host, self.port, self.dbname, self.user
        );
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
                return settings_error(format!(
                    "database.password: PostgreSQL refused the login of database.user={:?} ({}); check database.user and database.password",
                    self.user,
                    db.message()
                ));
            }
            if *code == SqlState::INVALID_CATALOG_NAME {
                return settings_error(format!(
                    "database.dbname: the database {:?} does not exist on database.host={:?} ({})",
                    self.dbname,
                    self.host,
                    db.message()
                ));
            }
            return super::error::from_pg(e);
        }
        // No answer from a server: the host (or port) is wrong, or it is down.
        Error::Meta(MetaError::Unavailable(format!(
            "database.host: cannot connect to PostgreSQL ({at}): {}",
            super::error::chain(e)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        let s = PgSettings {
            password: "hunter2-secret".into(),
            ..PgSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("(set)"), "{shown}");
    }

    #[test]
    fn only_disable_passes_as_sslmode_and_the_error_names_the_setting() {
        let ok = PgSettings::default();
        assert!(ok.config().is_ok());
        for mode in ["require", "verify-full", "bogus"] {
            let s = PgSettings {
                sslmode: mode.into(),
                ..PgSettings::default()
            };
            let err = s.config().unwrap_err().to_string();
            assert!(err.contains("database.sslmode"), "{err}");
            assert!(err.contains(mode), "{err}");
        }
    }

    #[test]
    fn empty_names_and_a_zero_pool_are_refused() {
        let s = PgSettings {
            pool: PoolSettings {
                max_open: 0,
                ..PoolSettings::default()
            },
            ..PgSettings::default()
        };
        assert!(s.config().unwrap_err().to_string().contains("database.pool.maxopen"));
        let s = PgSettings {
            dbname: String::new(),
            ..PgSettings::default()
        };
        assert!(s.config().unwrap_err().to_string().contains("database.dbname"));
    }
}
