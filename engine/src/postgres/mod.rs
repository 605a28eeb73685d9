//! PostgreSQL as the metadata store, shared by every replica of a scale-out deployment.
//!
//! - [`settings`]: the `database` settings (as GitLab's container registry names them) and
//!   the errors of a refused connection, each naming the setting to fix.
//! - `tls`: TLS to the server (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, libpq's meanings),
//!   one connector shared by every connection.
//! - [`migrate`]: versioned schema migrations, applied at start-up under an advisory lock.
//! - `listen`: the change token, from `LISTEN`/`NOTIFY`.
//! - `store`: the [`MetaStore`](crate::store::MetaStore) operations; `records`: the statements
//!   they share; `gc`: the sweep of one repository.
//!
//! Writes that touch one repository run in one transaction holding a transaction-level
//! advisory lock on the repository's name, so that pushes, deletions and the garbage
//! collection of one repository are serialized (as SQLite serializes every writer), while
//! repositories proceed in parallel; rows shared between repositories (`blobs`, `manifests`)
//! are guarded by their row locks.

mod blobs;
mod error;
mod gc;
mod leader;
mod listen;
pub mod migrate;
mod records;
mod sessions;
pub mod settings;
mod store;
mod tls;
mod usage;

pub use leader::GC_LOCK;
pub use listen::CHANNEL;
pub use migrate::{MIGRATION_LOCK, MIGRATIONS, Migration};
pub use settings::{PgSettings, PoolSettings, SslMode};

/// Reads the TLS files `settings` names (`database.sslrootcert`, `sslcert`, `sslkey`) and checks
/// that they make a client configuration, without connecting: what `berth check-config` checks.
pub fn check_tls_files(settings: &PgSettings) -> crate::Result<()> {
    tls::connector(settings).map(|_| ())
}

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use tls::Tls;

use crate::error::{Error, MetaError, Result};
use listen::Changes;

/// How often idle connections beyond `maxidle`, or older than `maxlifetime`, are closed.
const REAP_EVERY: Duration = Duration::from_secs(10);

/// PostgreSQL as the metadata store: a connection pool, and one more connection listening for
/// the changes of every replica. Clones share both.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    changes: Arc<Changes>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pool.close();
    }
}

/// One connection outside the pool (for migrations), driven on a task.
pub(crate) async fn connect_once(settings: &PgSettings) -> Result<Client> {
    let config = settings.config()?;
    let tls = tls::connector(settings)?;
    migrate::open(settings, &config, &tls).await
}

impl PgStore {
    /// Connect, bring the schema up to date ([`MIGRATIONS`]; replicas starting together wait
    /// for the one migrating), and start listening for changes. Fails with an error naming the
    /// setting when the server cannot be reached or refuses the login or the database.
    pub async fn connect(settings: &PgSettings) -> Result<PgStore> {
        let config = settings.config()?;
        // The TLS files are read once; every connection (migrations, pool, listener, and the
        // garbage collection leader, from the pool) uses this connector.
        let tls = tls::connector(settings)?;
        {
            let mut client = migrate::open(settings, &config, &tls).await?;
            migrate::run(&mut client, MIGRATIONS).await?;
        }
        let pool = pool(settings, config.clone(), tls.clone())?;
        let changes = Arc::new(Changes::default());
        let listener = listen::start(config, tls, migrate::overall_timeout(settings), changes.clone()).await?;
        let reaper = tokio::spawn(reap(pool.clone(), settings.pool.clone()));
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                changes,
                tasks: vec![listener, reaper],
            }),
        })
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.inner.pool.get().await?)
    }

    /// The counter behind the change token.
    pub(crate) fn changes(&self) -> &Changes {
        &self.inner.changes
    }

    /// The registry's identity: a random id made once, when the first replica asks, and kept by
    /// the database (an object store names the database it belongs to by it).
    pub async fn registry_id(&self) -> Result<String> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO registry_identity(id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&crate::name::UploadId::random().to_string()],
        )
        .await?;
        let row = c.query_one("SELECT id FROM registry_identity", &[]).await?;
        Ok(row.get(0))
    }

    /// The TLS version of a pooled connection (`TLSv1.3`…), as the server reports it in
    /// `pg_stat_ssl`; `None` when it is plain.
    pub async fn tls_version(&self) -> Result<Option<String>> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await?;
        let ssl: bool = row.get(0);
        Ok(if ssl { row.get(1) } else { None })
    }

    /// Connections in the pool: (open, idle).
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.inner.pool.status();
        (s.size, s.available)
    }
}

fn pool(settings: &PgSettings, config: tokio_postgres::Config, tls: Tls) -> Result<Pool> {
    let manager_config = ManagerConfig {
        // A connection the server closed is noticed without a round trip; one that fails
        // later fails its statement, which the caller sees as unavailable.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Off => Manager::from_config(config, NoTls, manager_config),
        Tls::On(connector) => Manager::from_config(config, connector, manager_config),
    };
    let timeout = Some(migrate::overall_timeout(settings));
    let mut builder = Pool::builder(manager)
        .max_size(settings.pool.max_open)
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout);
    if let Some(lifetime) = settings.pool.max_lifetime {
        builder = builder.pre_recycle(Hook::sync_fn(move |_, metrics| {
            if metrics.age() > lifetime {
                Err(HookError::message(
                    "the connection is older than database.pool.maxlifetime",
                ))
            } else {
                Ok(())
            }
        }));
    }
    builder
        .build()
        .map_err(|e| Error::Meta(MetaError::Settings(format!("database.pool: {e}"))))
}

/// Close idle connections beyond `max_idle` and those past `max_lifetime`, now and then.
async fn reap(pool: Pool, settings: PoolSettings) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut kept = 0usize;
        pool.retain(|_, metrics| {
            if settings.max_lifetime.is_some_and(|l| metrics.age() > l) {
                return false;
            }
            kept += 1;
            kept <= settings.max_idle
        });
    }
}
