//! Versioned schema migrations, applied online at start-up.
//!
//! The migrations are an ordered list of SQL compiled into the binary ([`MIGRATIONS`]). Each
//! replica, as it starts, takes one session-level advisory lock ([`MIGRATION_LOCK`]) so that only
//! one migrates at a time while the others wait for it, reads which versions `schema_migrations`
//! records, applies the missing ones in order (each in its own transaction, recorded in the same
//! transaction) and releases the lock. A database whose schema is newer than the binary knows is
//! accepted when every unknown version was marked backward-compatible when it was applied (an
//! older replica keeps serving during a rolling upgrade); otherwise start-up fails, naming the
//! versions.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::settings::PgSettings;
use super::tls::Tls;
use crate::error::{Error, MetaError, Result};

/// The advisory lock key (one `bigint`) held while migrating: "berthmig" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x6265_7274_686d_6967;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: 1, 2, 3, … in the order they apply.
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
    /// Whether a binary that does not know this migration still works on a schema that has it
    /// (an added index, a column with a default).
    pub backward_compatible: bool,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "the base schema: blobs, links, manifests, tags, referrers, repositories",
        sql: r#"
CREATE TABLE blobs(
  digest TEXT COLLATE "C" PRIMARY KEY, size BIGINT NOT NULL, refs BIGINT NOT NULL);
CREATE TABLE repo_blobs(
  repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
  size BIGINT NOT NULL, linked BIGINT NOT NULL,
  PRIMARY KEY(repo, digest));
CREATE TABLE manifests(
  digest TEXT COLLATE "C" PRIMARY KEY, refs BIGINT NOT NULL,
  media_type TEXT NOT NULL, bytes BYTEA NOT NULL);
CREATE TABLE repo_manifests(
  repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL, pushed BIGINT NOT NULL,
  PRIMARY KEY(repo, digest));
CREATE TABLE tags(
  repo TEXT COLLATE "C" NOT NULL, tag TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY(repo, tag));
CREATE INDEX tags_by_digest ON tags(repo, digest);
CREATE TABLE referrers(
  repo TEXT COLLATE "C" NOT NULL, subject TEXT COLLATE "C" NOT NULL,
  digest TEXT COLLATE "C" NOT NULL, descriptor JSONB NOT NULL,
  PRIMARY KEY(repo, subject, digest));
CREATE INDEX referrers_by_digest ON referrers(repo, digest);
CREATE TABLE repos(name TEXT COLLATE "C" PRIMARY KEY);
"#,
        backward_compatible: false,
    },
    Migration {
        version: 2,
        description: "blobs.state: the fence of garbage collection ('live', or 'deleting' while its object goes)",
        sql: r#"
ALTER TABLE blobs ADD COLUMN state TEXT NOT NULL DEFAULT 'live'
  CONSTRAINT blobs_state_valid CHECK (state IN ('live', 'deleting'));
"#,
        backward_compatible: true,
    },
    Migration {
        version: 3,
        description: "blobs in an object store: blobs.object, upload_sessions, upload_pieces, registry_identity",
        sql: r#"
ALTER TABLE blobs ADD COLUMN object TEXT COLLATE "C";
CREATE INDEX blobs_by_object ON blobs(object) WHERE object IS NOT NULL;
CREATE TABLE upload_sessions(
  id TEXT COLLATE "C" PRIMARY KEY, repo TEXT COLLATE "C" NOT NULL, owner TEXT COLLATE "C" NOT NULL,
  started BIGINT NOT NULL, touched BIGINT NOT NULL,
  received BIGINT NOT NULL DEFAULT 0, hash_state BYTEA NOT NULL,
  multipart TEXT, etags TEXT[] NOT NULL DEFAULT '{}', tail BIGINT NOT NULL DEFAULT 0,
  stored BOOLEAN NOT NULL DEFAULT false,
  writer TEXT, lease_until TIMESTAMPTZ);
CREATE INDEX upload_sessions_by_owner ON upload_sessions(owner);
CREATE INDEX upload_sessions_by_repo ON upload_sessions(repo);
CREATE INDEX upload_sessions_by_touched ON upload_sessions(touched);
CREATE TABLE upload_pieces(
  id TEXT COLLATE "C" NOT NULL REFERENCES upload_sessions(id) ON DELETE CASCADE,
  start BIGINT NOT NULL, bytes BYTEA NOT NULL,
  PRIMARY KEY(id, start));
CREATE TABLE registry_identity(
  singleton BOOLEAN PRIMARY KEY DEFAULT true CONSTRAINT registry_identity_one CHECK (singleton),
  id TEXT NOT NULL);
"#,
        backward_compatible: true,
    },
    Migration {
        version: 4,
        description: "pull-through cache: pulls (when each mirrored image was last pulled), fills (which replica downloads a blob)",
        sql: r#"
CREATE TABLE pulls(
  repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL, at BIGINT NOT NULL,
  PRIMARY KEY(repo, digest));
CREATE TABLE fills(
  digest TEXT COLLATE "C" PRIMARY KEY, owner TEXT NOT NULL, until BIGINT NOT NULL);
"#,
        backward_compatible: true,
    },
];

/// What a migration run found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The newest version before the run (0: an empty database).
    pub before: i64,
    /// The versions this run applied, in order.
    pub applied: Vec<i64>,
    /// Versions in the database that this binary does not know (all backward-compatible).
    pub unknown: Vec<i64>,
}

/// Connect once (outside any pool) and bring the schema to `migrations`' newest version.
pub async fn migrate(settings: &PgSettings, migrations: &[Migration]) -> Result<Applied> {
    let mut client = super::connect_once(settings).await?;
    run(&mut client, migrations).await
}

/// Apply the missing `migrations` over `client`, holding [`MIGRATION_LOCK`] throughout (the
/// lock is the session's, so it is released with the connection too).
pub(crate) async fn run(client: &mut Client, migrations: &[Migration]) -> Result<Applied> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let out = run_locked(client, migrations).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let out = out?;
    unlocked?;
    Ok(out)
}

async fn run_locked(client: &mut Client, migrations: &[Migration]) -> Result<Applied> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations(
               version BIGINT PRIMARY KEY,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
               description TEXT NOT NULL DEFAULT '',
               backward_compatible BOOLEAN NOT NULL DEFAULT false)",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, backward_compatible FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let present: Vec<(i64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let before = present.last().map_or(0, |(v, _)| *v);
    let known = |v: i64| migrations.iter().any(|m| m.version == v);
    let unknown: Vec<(i64, bool)> = present.iter().copied().filter(|(v, _)| !known(*v)).collect();
    let blocking: Vec<i64> = unknown.iter().filter(|(_, ok)| !ok).map(|(v, _)| *v).collect();
    if !blocking.is_empty() {
        let newest = migrations.last().map_or(0, |m| m.version);
        return Err(Error::Meta(MetaError::Database(format!(
            "the database schema is at version {before}, newer than this Berth knows (up to {newest}), \
             and version(s) {blocking:?} are not compatible with older binaries: upgrade Berth"
        ))));
    }
    let mut applied = Vec::new();
    for m in migrations {
        if present.iter().any(|(v, _)| *v == m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            let why = match super::error::from_pg(&e) {
                Error::Meta(inner) => inner.to_string(),
                other => other.to_string(),
            };
            Error::Meta(MetaError::Database(format!(
                "schema migration {} failed: {why}",
                m.version
            )))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations(version, description, backward_compatible) VALUES ($1, $2, $3)",
            &[&m.version, &m.description, &m.backward_compatible],
        )
        .await?;
        tx.batch_execute(&format!("NOTIFY {}", super::listen::CHANNEL)).await?;
        tx.commit().await?;
        tracing::info!(version = m.version, description = m.description, took = ?started.elapsed(), "applied a schema migration");
        applied.push(m.version);
    }
    if !unknown.is_empty() {
        tracing::warn!(versions = ?unknown, "the database schema is newer than this binary; those versions are marked backward-compatible");
    }
    Ok(Applied {
        before,
        applied,
        unknown: unknown.into_iter().map(|(v, _)| v).collect(),
    })
}

/// How long a connection attempt may take in all (name lookup included): the setting, plus a
/// little for the lookup.
pub(crate) fn overall_timeout(settings: &PgSettings) -> Duration {
    settings.connect_timeout + Duration::from_secs(1)
}

/// Connect (with TLS as `tls` says), driving the connection on a task; the error names the
/// setting to fix.
pub(crate) async fn open(settings: &PgSettings, config: &tokio_postgres::Config, tls: &Tls) -> Result<Client> {
    match tls {
        Tls::Off => connect(settings, config, NoTls).await,
        Tls::On(connector) => connect(settings, config, connector.clone()).await,
    }
}

/// One connection, driven on a task.
async fn connect<T>(settings: &PgSettings, config: &tokio_postgres::Config, tls: T) -> Result<Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let attempt = tokio::time::timeout(overall_timeout(settings), config.connect(tls)).await;
    let (client, conn) = match attempt {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(settings.connect_error(&e)),
        Err(_) => {
            return Err(Error::Meta(MetaError::Unavailable(format!(
                "database.host: no answer from PostgreSQL at database.host={:?} database.port={} within {:?} (database.connecttimeout)",
                settings.host, settings.port, settings.connect_timeout
            ))));
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_run_one_two_three_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.description);
        }
    }
}
