//! The embedded store's part of a pull-through cache's eviction (see [`crate::usage`]): pull
//! times in the `pulls` table, and what each repository uses.

use rusqlite::{OptionalExtension, params};

use super::Meta;
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::name::RepoName;
use crate::usage::{FillClaim, ImageUse, name_range};

fn parsed<T: std::str::FromStr>(s: String, what: &str) -> Result<T> {
    s.parse()
        .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored {what} {s:?} is not valid"))))
}

impl Meta {
    /// Record pull times (see [`crate::MetaStore::record_pulls`]), in one transaction.
    pub fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        self.write(|t| {
            let mut stmt = t.0.prepare_cached(
                "INSERT INTO pulls(repo, digest, at)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM repo_manifests WHERE repo = ?1 AND digest = ?2)
                 ON CONFLICT(repo, digest) DO UPDATE SET at = max(at, excluded.at)",
            )?;
            for (repo, digest, at) in pulls {
                stmt.execute(params![repo.as_str(), digest.to_string(), *at as i64])?;
            }
            Ok(())
        })
    }

    /// The least recently used manifests under `prefix` (see [`crate::MetaStore::least_used`]).
    pub fn least_used(&self, prefix: &str, limit: usize) -> Result<Vec<ImageUse>> {
        let (lo, hi) = name_range(prefix);
        self.read(|t| {
            let mut stmt = t.0.prepare_cached(
                "SELECT r.repo, r.digest, max(r.pushed, coalesce(p.at, 0)) AS used
                 FROM repo_manifests r LEFT JOIN pulls p ON p.repo = r.repo AND p.digest = r.digest
                 WHERE r.repo >= ?1 AND r.repo < ?2 ORDER BY used, r.repo, r.digest LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![lo, hi, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (repo, digest, used) = row?;
                out.push(ImageUse {
                    repo: parsed(repo, "repository name")?,
                    digest: parsed(digest, "digest")?,
                    used: used.max(0) as u64,
                });
            }
            Ok(out)
        })
    }

    /// Claim a blob's download (see [`crate::MetaStore::claim_fill`]).
    pub fn claim_fill(&self, digest: &Digest, owner: &str, lease_secs: u64) -> Result<FillClaim> {
        let now = super::now_secs();
        let until = now.saturating_add(lease_secs as i64);
        let digest = digest.to_string();
        self.write(|t| {
            let n =
                t.0.prepare_cached(
                    "INSERT INTO fills(digest, owner, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(digest) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE fills.owner = excluded.owner OR fills.until < ?4",
                )?
                .execute(params![digest, owner, until, now])?;
            if n > 0 {
                return Ok(FillClaim::Ours);
            }
            let holder: Option<String> =
                t.0.prepare_cached("SELECT owner FROM fills WHERE digest = ?1")?
                    .query_row(params![digest], |r| r.get(0))
                    .optional()?;
            Ok(FillClaim::Held(holder.unwrap_or_default()))
        })
    }

    /// Give up a claim (see [`crate::MetaStore::release_fill`]).
    pub fn release_fill(&self, digest: &Digest, owner: &str) -> Result<()> {
        self.write(|t| {
            t.0.prepare_cached("DELETE FROM fills WHERE digest = ?1 AND owner = ?2")?
                .execute(params![digest.to_string(), owner])?;
            Ok(())
        })
    }

    /// Bytes linked per repository under `prefix` (see [`crate::MetaStore::repo_usage`]).
    pub fn repo_usage(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        let (lo, hi) = name_range(prefix);
        self.read(|t| {
            let mut stmt = t.0.prepare_cached(
                "SELECT repo, coalesce(sum(size), 0) FROM repo_blobs WHERE repo >= ?1 AND repo < ?2 GROUP BY repo",
            )?;
            let rows = stmt.query_map(params![lo, hi], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (repo, bytes) = row?;
                out.push((parsed(repo, "repository name")?, bytes.max(0) as u64));
            }
            Ok(out)
        })
    }
}
