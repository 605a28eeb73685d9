//! The connection settings of the shared database, shaped like the `database` section of
//! GitLab's container registry (`host`, `port`, `user`, `password`, `dbname`, `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey`, `connecttimeout`, `pool.{maxopen,maxidle,maxlifetime}`),
//! and what a refused connection says: every error names the setting to fix.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::{Error, MetaError};

/// How the database is reached. Its `Debug` shows no password (and the TLS files only by
/// name: their contents are read when connecting, and kept by no setting).
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
    /// TLS mode, with libpq's names and meanings ([`SslMode`]): `disable`, `allow`, `prefer`,
    /// `require`, `verify-ca` or `verify-full`.
    pub sslmode: String,
    /// PEM CA certificate(s) the server's certificate must chain to (`verify-ca`, `verify-full`,
    /// and the other TLS modes when set); `None`: the system's roots for the verifying modes.
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate (chain, leaf first), sent when the server asks for one.
    pub sslcert: Option<PathBuf>,
    /// PEM private key of `sslcert` (PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub sslkey: Option<PathBuf>,
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
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
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
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
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

/// `database.sslmode`, as libpq names and means it (see `tls` for how each is carried out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// libpq: plain first, TLS if the server insists. The driver has no such mode: Berth tries
    /// TLS first, as `Prefer`.
    Allow,
    /// TLS when the server accepts it, plain otherwise; the certificate is not checked (unless
    /// `sslrootcert` is set).
    Prefer,
    /// TLS or no connection; the certificate is not checked unless `sslrootcert` is set.
    Require,
    /// TLS, the server's certificate chain verified (any host name).
    VerifyCa,
    /// TLS, the chain verified, and the certificate must name `database.host`.
    VerifyFull,
}

impl SslMode {
    /// Every mode by its name.
    pub const NAMES: &[(&str, SslMode)] = &[
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    /// The mode named `name` (lower case, as libpq).
    pub fn from_name(name: &str) -> Option<SslMode> {
        SslMode::NAMES.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    /// The mode named `name`, or an error naming `database.sslmode`.
    pub fn parse(name: &str) -> Result<SslMode, Error> {
        SslMode::from_name(name).ok_or_else(|| {
            settings_error(format!(
                "database.sslmode: {name:?} is not a PostgreSQL sslmode (disable, allow, prefer, require, verify-ca, verify-full)"
            ))
        })
    }

    /// Whether the server's certificate chain is verified whatever `sslrootcert` says.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl PgSettings {
    /// `host:port/dbname`, to name the database in messages and files (no credentials).
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// Whether `host` is the directory of a Unix socket (PostgreSQL has no TLS there).
    pub(crate) fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Check the settings and build the driver's configuration from them (the TLS files are
    /// read by the connector, `tls::connector`).
    pub(crate) fn config(&self) -> Result<tokio_postgres::Config, Error> {
        let mode = SslMode::parse(&self.sslmode)?;
        match (&self.sslcert, &self.sslkey) {
            (Some(_), None) => {
                return Err(settings_error(
                    "database.sslkey must be set with database.sslcert".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(settings_error(
                    "database.sslcert must be set with database.sslkey".into(),
                ));
            }
            _ => {}
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
            .ssl_mode(self.driver_ssl_mode(mode));
        Ok(c)
    }

    /// The driver's mode for `mode`: it knows only disable, prefer and require; what is
    /// verified is the connector's part.
    fn driver_ssl_mode(&self, mode: SslMode) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        if self.is_unix_socket() {
            return Driver::Disable;
        }
        match mode {
            SslMode::Disable => Driver::Disable,
            SslMode::Allow | SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }

    /// A login refused by `pg_hba.conf` for the way it came (plain or TLS) or for its client
    /// certificate, naming `database.sslmode` or `database.sslcert`.
    fn hba_error(&self, message: &str) -> Option<Error> {
        let who = format!("database.user={:?} database.dbname={:?}", self.user, self.dbname);
        if message.starts_with("no pg_hba.conf entry") && message.ends_with("no encryption") {
            return Some(settings_error(format!(
                "database.sslmode: PostgreSQL accepts {who} only over TLS, and database.sslmode is {} ({message}); \
                 set database.sslmode: verify-full (with database.sslrootcert) or require",
                self.sslmode
            )));
        }
        if message.starts_with("no pg_hba.conf entry") && message.contains("encryption") {
            return Some(settings_error(format!(
                "database.sslmode: PostgreSQL's pg_hba.conf has no entry for {who} over TLS ({message}); \
                 add a host or hostssl line for it at the server (or, where only hostnossl is allowed, set database.sslmode: disable)"
            )));
        }
        if message.contains("certificate") {
            let sent = match &self.sslcert {
                Some(p) => format!("database.sslcert={}", p.display()),
                None => "no client certificate (database.sslcert is not set)".to_owned(),
            };
            return Some(settings_error(format!(
                "database.sslcert: PostgreSQL wants a valid client certificate for {who} and got {sent} ({message}); \
                 set database.sslcert and database.sslkey to a certificate signed by a CA in the server's ssl_ca_file \
                 (its common name must be the user for clientcert=verify-full or cert authentication)"
            )));
        }
        None
    }

    /// What a failed first connection means, naming the setting to fix.
    pub(crate) fn connect_error(&self, e: &tokio_postgres::Error) -> Error {
        let at = format!(
            "database.host={:?} database.port={} database.dbname={:?} database.user={:?}",
            self.host, self.port, self.dbname, self.user
        );
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && let Some(named) = self.hba_error(db.message())
            {
                return named;
            }
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
        if let Some(named) = super::tls::explain(self, e) {
            return named;
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
    fn every_libpq_sslmode_passes_and_others_are_named() {
        use tokio_postgres::config::SslMode as Driver;
        for (mode, driver) in [
            ("disable", Driver::Disable),
            ("allow", Driver::Prefer),
            ("prefer", Driver::Prefer),
            ("require", Driver::Require),
            ("verify-ca", Driver::Require),
            ("verify-full", Driver::Require),
        ] {
            let s = PgSettings {
                sslmode: mode.into(),
                ..PgSettings::default()
            };
            assert_eq!(s.config().unwrap().get_ssl_mode(), driver, "{mode}");
            // No TLS over a Unix socket, whatever the mode (as libpq).
            let unix = PgSettings {
                host: "/run/postgresql".into(),
                ..s
            };
            assert_eq!(unix.config().unwrap().get_ssl_mode(), Driver::Disable, "{mode}");
        }
        for mode in ["bogus", "REQUIRE", "verify_full", ""] {
            let s = PgSettings {
                sslmode: mode.into(),
                ..PgSettings::default()
            };
            let err = s.config().unwrap_err().to_string();
            assert!(err.contains("database.sslmode"), "{err}");
            assert!(err.contains(&format!("{mode:?}")), "{err}");
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_other_way_round() {
        let s = PgSettings {
            sslmode: "require".into(),
            sslcert: Some("/etc/berth/client.crt".into()),
            ..PgSettings::default()
        };
        assert!(s.config().unwrap_err().to_string().contains("database.sslkey"));
        let s = PgSettings {
            sslmode: "require".into(),
            sslkey: Some("/etc/berth/client.key".into()),
            ..PgSettings::default()
        };
        assert!(s.config().unwrap_err().to_string().contains("database.sslcert"));
    }

    #[test]
    fn debug_names_the_tls_files_without_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let s = PgSettings {
            sslmode: "verify-full".into(),
            sslcert: Some(dir.path().join("client.crt")),
            sslkey: Some(key.clone()),
            ..PgSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("client.key"), "{shown}");
        assert!(!shown.contains("c2VjcmV0") && !shown.contains("BEGIN"), "{shown}");
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
