//! The embedded SQLite store behind the [`MetaStore`] interface: each operation runs its
//! statements on the blocking pool, in one transaction where it writes.

use std::sync::Arc;

use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::error::{Error, MetaError, Result};
use crate::manifest;
use crate::meta::{Meta, NewManifest, RepoGc, StoredManifest};
use crate::name::{Reference, RepoName, Tag};
use crate::page::Page;
use crate::store::{CatalogFilter, ChangeToken, ManifestRecord, MetaStore, TokenValue};

/// SQLite (WAL) as the metadata store.
#[derive(Clone)]
pub struct SqliteStore {
    meta: Arc<Meta>,
}

impl SqliteStore {
    /// The store over an open database.
    pub fn new(meta: Meta) -> SqliteStore {
        SqliteStore { meta: Arc::new(meta) }
    }

    /// The database itself, for the operations that run a blob file's step inside a
    /// transaction (commits and removals of blobs).
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Run `f` on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Meta) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta))
            .await
            .map_err(|e| Error::Meta(MetaError::TaskLost(e.to_string())))?
    }
}

impl MetaStore for SqliteStore {
    async fn check(&self) -> Result<()> {
        self.run(|m| m.check()).await
    }

    fn change_token(&self) -> Option<ChangeToken> {
        self.meta
            .data_version()
            .ok()
            .map(|v| ChangeToken(TokenValue::Sqlite(v)))
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let (r, d) = (repo.clone(), digest.clone());
        self.run(move |m| m.repo_blob(&r, &d)).await
    }

    async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        let (r, d, f) = (repo.clone(), digest.clone(), from.cloned());
        self.run(move |m| {
            m.write(|tx| {
                let size = match &f {
                    Some(f) => tx.repo_blob(f, &d)?,
                    None => tx.blob(&d)?,
                };
                match size {
                    Some(size) => tx.link_blob(&r, &d, size).map(|()| true),
                    None => Ok(false),
                }
            })
        })
        .await
    }

    async fn blob_stats(&self) -> Result<(u64, u64)> {
        self.run(|m| m.blob_stats()).await
    }

    async fn put_manifest(&self, m: ManifestRecord) -> Result<()> {
        self.run(move |meta| {
            meta.put_manifest(NewManifest {
                repo: &m.repo,
                digest: &m.digest,
                media_type: &m.media_type,
                bytes: &m.bytes,
                tag: m.tag.as_ref(),
                blobs: &m.blobs,
                children: &m.children,
                referrer: m.referrer.as_ref().map(|(s, d)| (s, d.clone())),
            })
        })
        .await
    }

    async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<StoredManifest>> {
        let (r, re) = (repo.clone(), reference.clone());
        self.run(move |m| {
            m.read(|t| {
                let digest = match &re {
                    Reference::Digest(d) => Some(d.clone()),
                    Reference::Tag(tag) => t.resolve_tag(&r, tag)?,
                };
                match digest {
                    Some(d) => t.manifest(&r, &d),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (r, t) = (repo.clone(), tag.clone());
        self.run(move |m| m.delete_tag(&r, &t)).await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (r, d) = (repo.clone(), digest.clone());
        self.run(move |m| {
            m.write(|tx| {
                let Some(stored) = tx.manifest(&r, &d)? else {
                    return Ok(false);
                };
                // Its referrer entry is found through the subject it names.
                let subject = manifest::parse(Some(&stored.media_type), &stored.bytes)
                    .ok()
                    .and_then(|i| i.subject);
                tx.delete_manifest(&r, &d, subject.as_ref())
            })
        })
        .await
    }

    async fn tags(&self, repo: &RepoName, last: Option<String>, n: usize) -> Result<Page<Tag>> {
        let r = repo.clone();
        self.run(move |m| {
            if !m.repo_exists(&r)? {
                return Err(Error::NameUnknown(r.to_string()));
            }
            m.tags(&r, last.as_deref(), n)
        })
        .await
    }

    async fn catalog(&self, last: Option<String>, n: usize, keep: CatalogFilter) -> Result<Page<RepoName>> {
        self.run(move |m| m.catalog(last.as_deref(), n, &*keep)).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>> {
        let (r, s) = (repo.clone(), subject.clone());
        self.run(move |m| m.referrers(&r, &s)).await
    }

    async fn gc_repo(&self, repo: &RepoName, grace_secs: u64, untagged: bool, dry_run: bool) -> Result<RepoGc> {
        let r = repo.clone();
        self.run(move |m| m.gc_repo(&r, grace_secs, untagged, dry_run)).await
    }
}
