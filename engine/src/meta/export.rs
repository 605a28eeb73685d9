//! Reading every record out in pages (keyset order), for copying the metadata into another
//! store ([`crate::migrate`]) without holding the registry in memory.

use rusqlite::params;

use super::{Meta, StoredManifest};
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::name::{RepoName, Tag};

fn corrupt(what: &str, v: &str) -> Error {
    Error::Meta(MetaError::Corrupt(format!("a stored {what} {v:?} is not valid")))
}

fn repo(s: &str) -> Result<RepoName> {
    s.parse().map_err(|_| corrupt("repository name", s))
}

fn digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|_| corrupt("digest", s))
}

/// Where a page ends: the last row's (repository, key), to start the next after.
pub type Cursor = Option<(String, String)>;

impl Meta {
    /// Up to `n` rows of `sql` after `after`: `sql` takes the cursor as ?1, ?2 and the count as
    /// ?3; `row` reads one row, `parse` validates it.
    fn page<R, T>(
        &self,
        sql: &str,
        after: &Cursor,
        n: usize,
        row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
        parse: impl Fn(R) -> Result<T>,
    ) -> Result<Vec<T>> {
        let (r, k) = after.clone().unwrap_or_default();
        self.read(|tx| {
            let mut stmt = tx.0.prepare_cached(sql)?;
            let rows = stmt.query_map(params![r, k, n as i64], row)?;
            rows.map(|r| parse(r?)).collect()
        })
    }

    /// Up to `n` blob links after `after`, by (repository, digest): (repository, digest, size).
    pub fn links_after(&self, after: &Cursor, n: usize) -> Result<Vec<(RepoName, Digest, u64)>> {
        self.page(
            "SELECT repo, digest, size FROM repo_blobs WHERE (repo, digest) > (?1, ?2)
             ORDER BY repo, digest LIMIT ?3",
            after,
            n,
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
            |(r, d, size)| Ok((repo(&r)?, digest(&d)?, size as u64)),
        )
    }

    /// Up to `n` manifests after `after`, by (repository, digest).
    pub fn manifests_after(&self, after: &Cursor, n: usize) -> Result<Vec<(RepoName, StoredManifest)>> {
        self.page(
            "SELECT rm.repo, m.digest, m.media_type, m.bytes FROM repo_manifests rm
             JOIN manifests m ON m.digest = rm.digest
             WHERE (rm.repo, rm.digest) > (?1, ?2) ORDER BY rm.repo, rm.digest LIMIT ?3",
            after,
            n,
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            },
            |(r, d, media_type, bytes)| {
                Ok((
                    repo(&r)?,
                    StoredManifest {
                        digest: digest(&d)?,
                        media_type,
                        bytes: bytes.into(),
                    },
                ))
            },
        )
    }

    /// Up to `n` tags after `after`, by (repository, tag): (repository, tag, digest).
    pub fn tags_after(&self, after: &Cursor, n: usize) -> Result<Vec<(RepoName, Tag, Digest)>> {
        self.page(
            "SELECT repo, tag, digest FROM tags WHERE (repo, tag) > (?1, ?2) ORDER BY repo, tag LIMIT ?3",
            after,
            n,
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
            |(r, t, d)| Ok((repo(&r)?, t.parse().map_err(|_| corrupt("tag", &t))?, digest(&d)?)),
        )
    }
}
