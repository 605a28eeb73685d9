//! The [`MetaStore`] operations over PostgreSQL. Each write is one transaction that holds the
//! repository's advisory lock, notifies [`CHANNEL`] and, once committed, bumps this process's
//! change counter. Listings page by key (`WHERE name > $last ORDER BY name LIMIT n + 1`); the
//! text keys use the "C" collation, so they sort by bytes as the API wants.

use bytes::Bytes;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::PgStore;
use super::listen::{CHANNEL, MAX_PAYLOAD};
use super::records::{NOW, digest, exec, forget_repo_if_empty, link_blob, remove_manifest, row, rows, size};
use crate::change::{Change, ChangeSink};
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::meta::{RepoGc, StoredManifest};
use crate::name::{Reference, RepoName, Tag, UploadId};
use crate::page::Page;
use crate::reach::Sweep;
use crate::store::{BlobLink, CatalogFilter, Feed, GcLease, ManifestRecord, MetaStore, Removal, StagedBlob};

/// The first key of the two-key advisory locks on repository names ("brth").
const REPO_LOCK_CLASS: i32 = 0x6272_7468;

/// Most catalog rows read per round trip while a filter drops names.
const CATALOG_BATCH: usize = 500;

impl PgStore {
    /// Begin a write on `repo`: a transaction holding the repository's lock.
    pub(super) async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
        repo: &str,
    ) -> Result<Transaction<'c>> {
        let tx = client.transaction().await?;
        exec(
            &tx,
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&REPO_LOCK_CLASS, &repo],
        )
        .await?;
        Ok(tx)
    }

    /// Commit a write, telling every replica (and this one's cache, at once) what it changed;
    /// a write that changed nothing a cache holds (a new link, a new blob) notifies nobody.
    pub(super) async fn commit(&self, tx: Transaction<'_>, changes: &[Change]) -> Result<()> {
        if !changes.is_empty() {
            let payload = Change::encode_all(changes, MAX_PAYLOAD);
            exec(&tx, "SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await?;
        }
        tx.commit().await?;
        self.changes().deliver(changes);
        Ok(())
    }
}

/// The first of `wanted` that `present` lacks.
fn first_missing<'a>(wanted: &'a [Digest], present: &[Row]) -> Option<&'a Digest> {
    let have: std::collections::HashSet<String> = present.iter().map(|r| r.get(0)).collect();
    wanted.iter().find(|d| !have.contains(&d.to_string()))
}

impl MetaStore for PgStore {
    async fn check(&self) -> Result<()> {
        let c = self.client().await?;
        row(&c, "SELECT 1", &[]).await?;
        Ok(())
    }

    fn subscribe(&self, sink: ChangeSink) {
        self.changes().subscribe(sink);
    }

    fn feed(&self) -> Feed {
        if self.changes().listening() {
            Feed::Current
        } else {
            Feed::Unknown
        }
    }

    async fn catch_up(&self) -> Result<()> {
        Ok(())
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let c = self.client().await?;
        let found = row(
            &c,
            "SELECT size FROM repo_blobs WHERE repo = $1 AND digest = $2",
            &[&repo.as_str(), &digest.to_string()],
        )
        .await?;
        Ok(found.map(|r| size(r.get(0))))
    }

    async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        let (r, d) = (repo.as_str(), digest.to_string());
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        // The source row is locked, so a sweep of the source cannot drop the blob meanwhile.
        let source = match from {
            Some(f) => {
                row(
                    &tx,
                    "SELECT size FROM repo_blobs WHERE repo = $1 AND digest = $2 FOR SHARE",
                    &[&f.as_str(), &d],
                )
                .await?
            }
            None => {
                row(
                    &tx,
                    "SELECT size FROM blobs WHERE digest = $1 AND state = 'live' FOR UPDATE",
                    &[&d],
                )
                .await?
            }
        };
        let Some(source) = source else {
            return Ok(false);
        };
        link_blob(&tx, r, &d, source.get(0), None).await?;
        self.commit(tx, &[]).await?;
        Ok(true)
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<u64>> {
        self.blob_size(digest).await
    }

    async fn blob_object(&self, digest: &Digest) -> Result<Option<UploadId>> {
        self.object_of(digest).await
    }

    async fn commit_blob(&self, link: BlobLink, staged: Box<dyn StagedBlob>) -> Result<()> {
        self.commit_staged(link, staged).await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest, remove: Removal) -> Result<bool> {
        self.unlink_fenced(repo, digest, remove).await
    }

    async fn remove_unrecorded(&self, digest: &Digest, remove: Option<Removal>) -> Result<bool> {
        self.remove_fenced(digest, remove).await
    }

    async fn blob_stats(&self) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT count(*), CAST(coalesce(sum(size), 0) AS bigint) FROM blobs",
            &[],
        )
        .await?
        .ok_or_else(|| Error::Meta(MetaError::Database("an aggregate returned no row".into())))?;
        Ok((size(r.get(0)), size(r.get(1))))
    }

    async fn put_manifest(&self, m: ManifestRecord) -> Result<()> {
        let (r, d) = (m.repo.as_str(), m.digest.to_string());
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        // What the manifest references is locked until the commit: no sweep unlinks it meanwhile.
        if !m.blobs.is_empty() {
            let wanted: Vec<String> = m.blobs.iter().map(Digest::to_string).collect();
            let present = rows(
                &tx,
                "SELECT digest FROM repo_blobs WHERE repo = $1 AND digest = ANY($2) FOR SHARE",
                &[&r, &wanted],
            )
            .await?;
            if let Some(missing) = first_missing(&m.blobs, &present) {
                return Err(Error::ManifestBlobUnknown(missing.clone()));
            }
        }
        if !m.children.is_empty() {
            let wanted: Vec<String> = m.children.iter().map(Digest::to_string).collect();
            let present = rows(
                &tx,
                "SELECT digest FROM repo_manifests WHERE repo = $1 AND digest = ANY($2) FOR SHARE",
                &[&r, &wanted],
            )
            .await?;
            if let Some(missing) = first_missing(&m.children, &present) {
                return Err(Error::ManifestBlobUnknown(missing.clone()));
            }
        }
        let newly_linked = exec(
            &tx,
            &format!("INSERT INTO repo_manifests(repo, digest, pushed) VALUES ($1, $2, {NOW}) ON CONFLICT DO NOTHING"),
            &[&r, &d],
        )
        .await?
            > 0;
        if !newly_linked {
            exec(
                &tx,
                &format!("UPDATE repo_manifests SET pushed = {NOW} WHERE repo = $1 AND digest = $2"),
                &[&r, &d],
            )
            .await?;
        }
        exec(
            &tx,
            "INSERT INTO manifests(digest, refs, media_type, bytes) VALUES ($1, 1, $2, $3)
             ON CONFLICT(digest) DO UPDATE SET
               refs = CASE WHEN $4 THEN manifests.refs + 1 ELSE greatest(manifests.refs, 1) END,
               media_type = excluded.media_type, bytes = excluded.bytes",
            &[&d, &m.media_type, &&m.bytes[..], &newly_linked],
        )
        .await?;
        if let Some(tag) = &m.tag {
            exec(
                &tx,
                "INSERT INTO tags(repo, tag, digest) VALUES ($1, $2, $3)
                 ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest",
                &[&r, &tag.as_str(), &d],
            )
            .await?;
        }
        if let Some((subject, descriptor)) = &m.referrer {
            let json = serde_json::to_string(descriptor).map_err(|e| Error::Meta(MetaError::Corrupt(e.to_string())))?;
            exec(
                &tx,
                "INSERT INTO referrers(repo, subject, digest, descriptor) VALUES ($1, $2, $3, CAST($4::text AS jsonb))
                 ON CONFLICT(repo, subject, digest) DO UPDATE SET descriptor = excluded.descriptor",
                &[&r, &subject.to_string(), &d, &json],
            )
            .await?;
        }
        exec(&tx, "INSERT INTO repos(name) VALUES ($1) ON CONFLICT DO NOTHING", &[&r]).await?;
        let mut changes = vec![Change::Manifest(m.repo.clone(), m.digest.clone())];
        changes.extend(m.tag.iter().map(|t| Change::Tag(m.repo.clone(), t.clone())));
        self.commit(tx, &changes).await
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        let c = self.client().await?;
        let found = match reference {
            Reference::Digest(d) => row(
                &c,
                "SELECT r.digest, m.media_type, m.bytes FROM repo_manifests r JOIN manifests m ON m.digest = r.digest
                 WHERE r.repo = $1 AND r.digest = $2",
                &[&repo.as_str(), &d.to_string()],
            )
            .await?,
            Reference::Tag(t) => {
                row(
                    &c,
                    "SELECT t.digest, m.media_type, m.bytes FROM tags t
                 JOIN repo_manifests r ON r.repo = t.repo AND r.digest = t.digest
                 JOIN manifests m ON m.digest = t.digest
                 WHERE t.repo = $1 AND t.tag = $2",
                    &[&repo.as_str(), &t.as_str()],
                )
                .await?
            }
        };
        let Some(r) = found else { return Ok(None) };
        Ok(Some(StoredManifest {
            digest: digest(r.get(0))?,
            media_type: r.get(1),
            bytes: Bytes::from(r.get::<_, Vec<u8>>(2)),
        }))
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let r = repo.as_str();
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        let n = exec(
            &tx,
            "DELETE FROM tags WHERE repo = $1 AND tag = $2",
            &[&r, &tag.as_str()],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        self.commit(tx, &[Change::Tag(repo.clone(), tag.clone())]).await?;
        Ok(true)
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let r = repo.as_str();
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        if !remove_manifest(&tx, r, &digest.to_string()).await? {
            return Ok(false);
        }
        forget_repo_if_empty(&tx, r).await?;
        // Its tags went with it.
        self.commit(tx, &[Change::Repo(repo.clone())]).await?;
        Ok(true)
    }

    async fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> Result<Page<Tag>> {
        let c = self.client().await?;
        if row(&c, "SELECT 1 FROM repos WHERE name = $1", &[&repo.as_str()])
            .await?
            .is_none()
        {
            return Err(Error::NameUnknown(repo.to_string()));
        }
        let limit = i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX);
        let found = rows(
            &c,
            "SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3",
            &[&repo.as_str(), &last.unwrap_or_default(), &limit],
        )
        .await?;
        page(found.iter().map(|r| r.get::<_, String>(0)), n)
    }

    async fn catalog(&self, last: Option<String>, n: usize, keep: CatalogFilter) -> Result<Page<RepoName>> {
        let c = self.client().await?;
        let batch = n.saturating_add(1).clamp(1, CATALOG_BATCH);
        let limit = batch as i64;
        let mut after = last.unwrap_or_default();
        let mut kept: Vec<String> = Vec::new();
        loop {
            let found = rows(
                &c,
                "SELECT name FROM repos WHERE name > $1 ORDER BY name LIMIT $2",
                &[&after, &limit],
            )
            .await?;
            let done = found.len() < batch;
            for r in &found {
                let name: String = r.get(0);
                if keep(&name) {
                    kept.push(name.clone());
                }
                after = name;
            }
            if done || kept.len() > n {
                break;
            }
        }
        page(kept.into_iter(), n)
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let c = self.client().await?;
        let found = rows(
            &c,
            "SELECT CAST(descriptor AS text) FROM referrers WHERE repo = $1 AND subject = $2 ORDER BY digest",
            &[&repo.as_str(), &subject.to_string()],
        )
        .await?;
        let mut out = Vec::with_capacity(found.len());
        for r in &found {
            // A damaged descriptor hides that one referrer, not the whole list.
            match serde_json::from_str(r.get(0)) {
                Ok(d) => out.push(d),
                Err(e) => {
                    tracing::warn!(repo = %repo, subject = %subject, error = %e, "skipping a damaged referrer descriptor")
                }
            }
        }
        Ok(out)
    }

    async fn gc_lease(&self) -> Result<Option<GcLease>> {
        self.gc_leader().await
    }

    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest, u64)>) -> Result<()> {
        self.record_pull_times(pulls).await
    }

    async fn least_used(&self, prefix: &str, limit: usize) -> Result<Vec<crate::usage::ImageUse>> {
        self.least_used_manifests(prefix, limit).await
    }

    async fn repo_usage(&self, prefix: &str) -> Result<Vec<(RepoName, u64)>> {
        self.linked_bytes(prefix).await
    }

    async fn claim_fill(&self, digest: &Digest, owner: &str, lease_secs: u64) -> Result<crate::FillClaim> {
        self.claim_fill_row(digest, owner, lease_secs).await
    }

    async fn release_fill(&self, digest: &Digest, owner: &str) -> Result<()> {
        self.release_fill_row(digest, owner).await
    }

    async fn gc_repo(&self, repo: &RepoName, grace_secs: u64, sweep: &Sweep, dry_run: bool) -> Result<RepoGc> {
        let r = repo.as_str();
        let mut c = self.client().await?;
        let tx = self.begin(&mut c, r).await?;
        let out = super::gc::sweep(&tx, r, grace_secs, sweep).await?;
        if !dry_run && out.skipped.is_none() {
            // Manifests and blob links; an evicted image's tags went with it (manifests no tag
            // reached change no tag answer).
            let evicted = matches!(sweep, Sweep::Image(_)) && !out.manifests.is_empty();
            let changes: Vec<Change> = (out.manifests.iter())
                .map(|d| Change::Manifest(repo.clone(), d.clone()))
                .chain(out.links.iter().map(|(d, _)| Change::Blob(repo.clone(), d.clone())))
                .chain(evicted.then(|| Change::Repo(repo.clone())))
                .collect();
            self.commit(tx, &changes).await?;
        }
        Ok(out)
    }
}

/// Up to `n` of `names`, parsed; the page says whether another follows. A stored name that does
/// not parse is a damaged record.
fn page<T: std::str::FromStr>(names: impl Iterator<Item = String>, n: usize) -> Result<Page<T>> {
    let mut items = Vec::new();
    for name in names {
        if items.len() == n {
            return Ok(Page { items, more: true });
        }
        let item = name
            .parse()
            .map_err(|_| Error::Meta(MetaError::Corrupt(format!("a stored name {name:?} is not valid"))))?;
        items.push(item);
    }
    Ok(Page { items, more: false })
}
