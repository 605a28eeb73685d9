//! The shared database's part of a pull-through cache's eviction (see [`crate::usage`]): pull
//! times in the `pulls` table (migration 4), and what each repository uses.

use super::PgStore;
use super::records::{NOW, digest, exec, row, rows, size};
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::name::RepoName;
use crate::usage::{FillClaim, ImageUse, name_range};

fn repo_name(s: String) -> Result<RepoName> {
    s.parse()
        .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored name {s:?} is not valid"))))
}

impl PgStore {
    /// Record pull times in one statement (see [`crate::MetaStore::record_pulls`]).
    pub(super) async fn record_pull_times(&self, pulls: Vec<(RepoName, Digest, u64)>) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let repos: Vec<String> = pulls.iter().map(|(r, _, _)| r.to_string()).collect();
        let digests: Vec<String> = pulls.iter().map(|(_, d, _)| d.to_string()).collect();
        let ats: Vec<i64> = pulls
            .iter()
            .map(|(_, _, t)| i64::try_from(*t).unwrap_or(i64::MAX))
            .collect();
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO pulls(repo, digest, at)
             SELECT x.repo, x.digest, max(x.at) FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(repo, digest, at)
             WHERE EXISTS (SELECT 1 FROM repo_manifests r WHERE r.repo = x.repo AND r.digest = x.digest)
             GROUP BY x.repo, x.digest
             ON CONFLICT (repo, digest) DO UPDATE SET at = GREATEST(pulls.at, EXCLUDED.at)",
            &[&repos, &digests, &ats],
        )
        .await?;
        Ok(())
    }

    /// The least recently used manifests under `prefix` (see [`crate::MetaStore::least_used`]).
    pub(super) async fn least_used_manifests(&self, prefix: &str, limit: usize) -> Result<Vec<ImageUse>> {
        let (lo, hi) = name_range(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let found = rows(
            &c,
            "SELECT r.repo, r.digest, GREATEST(r.pushed, coalesce(p.at, 0)) AS used
             FROM repo_manifests r LEFT JOIN pulls p ON p.repo = r.repo AND p.digest = r.digest
             WHERE r.repo >= $1 AND r.repo < $2 ORDER BY used, r.repo, r.digest LIMIT $3",
            &[&lo, &hi, &limit],
        )
        .await?;
        found
            .iter()
            .map(|r| {
                Ok(ImageUse {
                    repo: repo_name(r.get(0))?,
                    digest: digest(r.get(1))?,
                    used: size(r.get(2)),
                })
            })
            .collect()
    }

    /// Claim a blob's download (see [`crate::MetaStore::claim_fill`]), by the database's clock.
    pub(super) async fn claim_fill_row(&self, digest: &Digest, owner: &str, lease_secs: u64) -> Result<FillClaim> {
        let lease = i64::try_from(lease_secs).unwrap_or(i64::MAX);
        let digest = digest.to_string();
        let c = self.client().await?;
        let n = exec(
            &c,
            &format!(
                "INSERT INTO fills(digest, owner, until) VALUES ($1, $2, {NOW} + $3)
                 ON CONFLICT (digest) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
                 WHERE fills.owner = EXCLUDED.owner OR fills.until < {NOW}"
            ),
            &[&digest, &owner, &lease],
        )
        .await?;
        if n > 0 {
            return Ok(FillClaim::Ours);
        }
        let holder = row(&c, "SELECT owner FROM fills WHERE digest = $1", &[&digest]).await?;
        Ok(FillClaim::Held(holder.map(|r| r.get(0)).unwrap_or_default()))
    }

    /// Give up a claim (see [`crate::MetaStore::release_fill`]).
    pub(super) async fn release_fill_row(&self, digest: &Digest, owner: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM fills WHERE digest = $1 AND owner = $2",
            &[&digest.to_string(), &owner],
        )
        .await?;
        Ok(())
    }

    /// Bytes linked per repository under `prefix` (see [`crate::MetaStore::repo_usage`]).
    pub(super) async fn linked_bytes(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        let (lo, hi) = name_range(prefix);
        let c = self.client().await?;
        let found = rows(
            &c,
            "SELECT repo, CAST(coalesce(sum(size), 0) AS bigint) FROM repo_blobs
             WHERE repo >= $1 AND repo < $2 GROUP BY repo",
            &[&lo, &hi],
        )
        .await?;
        found
            .iter()
            .map(|r| Ok((repo_name(r.get(0))?, size(r.get(1)))))
            .collect()
    }
}
